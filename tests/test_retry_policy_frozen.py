"""RetryPolicy is frozen as RestartPolicy is (a setting changed after the check made a call fail with a bare
ValueError from time.sleep, and nan silently became max_backoff); multiplier=math.inf is refused as the
other settings' infinities are; a subclass's backoff() that gives no wait a wait takes is a ConfigError,
the same for sync and async calls. Real calls go to the fault-switch KV plugin."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from pathlib import Path

import pytest

from tests.resilience_util import PLUGIN_NAME, faulty_config

from plugbay import AsyncClient, Client, ConfigError, RestartPolicy, RetryPolicy, install


@pytest.mark.parametrize("field, value", [("initial_backoff", -1.0), ("initial_backoff", math.nan),
                                          ("max_attempts", 0), ("methods", ["Get"])])
def test_a_retry_policy_cannot_be_changed_after_its_check(field: str, value: object) -> None:
    policy = RetryPolicy(methods=["Put"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(policy, field, value)
    assert policy == RetryPolicy(methods=["Put"])


def test_replace_makes_a_checked_copy() -> None:
    policy = RetryPolicy(max_attempts=4, methods=("Get",))
    assert dataclasses.replace(policy, initial_backoff=0.5).initial_backoff == 0.5
    with pytest.raises(ConfigError, match="initial_backoff must be >= 0"):
        dataclasses.replace(policy, initial_backoff=-1.0)


@pytest.mark.parametrize("kind", [RetryPolicy, RestartPolicy])
def test_an_infinite_multiplier_is_refused(kind: type) -> None:
    with pytest.raises(ConfigError, match=r"multiplier must be a finite number >= 1 \(got inf\)"):
        kind(multiplier=math.inf)
    assert kind(multiplier=1e300).multiplier == 1e300  # large is fine: the growth stops at max_backoff


@pytest.mark.parametrize("bad", [math.nan, -1.0, math.inf])
def test_a_backoff_no_sleep_takes_is_a_config_error_on_sync_and_async_calls(tmp_path: Path, bad: float) -> None:
    class _BadBackoff(RetryPolicy):
        """A policy of the user's own whose backoff() gives what no sleep takes."""

        def backoff(self, retry: int) -> float:
            return bad

    policy = _BadBackoff(methods=["Get"])
    with Client(faulty_config(tmp_path, call_timeout=5.0)) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("__fail__", b"1")  # the next Get fails with UNAVAILABLE: a retry is due
        install(client, retry=policy)
        with pytest.raises(ConfigError, match=r"_BadBackoff.backoff\(1\) must be"):
            kv.get("k")

    async def main() -> None:
        async with AsyncClient(faulty_config(tmp_path, call_timeout=5.0)) as client:
            kv = await client.dispense(PLUGIN_NAME)
            await kv.put("__fail__", b"1")
            install(client, retry=policy)
            with pytest.raises(ConfigError, match=r"_BadBackoff.backoff\(1\) must be"):
                await kv.get("k")

    asyncio.run(main())
