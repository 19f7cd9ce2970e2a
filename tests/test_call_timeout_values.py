"""A call's timeout= through a Client's channel (sync and asyncio, plain and through a call hook): nan, a
negative number or a str is a ConfigError naming timeout=; math.inf (or a number too long for grpcio's
deadline) means no deadline. grpcio alone turned inf/1e300/nan into a deadline already past (a
CallTimeoutError at once, advising a larger timeout=), 10**400 into OverflowError, "1" into TypeError."""

from __future__ import annotations

import asyncio
import math
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402
from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402

from plugbay import AsyncClient, Client, ClientConfig, ConfigError, RetryPolicy, install  # noqa: E402
from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from plugbay.core.host.deadline import NO_DEADLINE, call_timeout  # noqa: E402

BAD = [math.nan, -math.inf, -1, -(10**400), "1", b"1", True, [1]]
NO_LIMIT = [math.inf, 1e300, 10**400]
# any real number grpcio took before: a Fraction and numpy scalars (np.float32 is no float subclass)
OTHER_REALS = [Fraction(5), np.int64(5), np.float32(5), np.float64(5)]
CONFIG = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                      cmd=[sys.executable, str(REPO / "examples" / "kv" / "plugin.py")])
GET = kv_pb2.GetRequest(key="a")


def test_the_checked_value() -> None:
    assert call_timeout(None) is None
    assert call_timeout(2) == 2.0 and call_timeout(0.5) == 0.5
    assert [call_timeout(t) for t in NO_LIMIT] == [NO_DEADLINE] * 3
    for real in OTHER_REALS:
        assert call_timeout(real) == 5.0 and type(call_timeout(real)) is float
    assert call_timeout(Fraction(10**400)) == NO_DEADLINE
    for bad in (np.float64("nan"), np.int64(-1), Fraction(-1, 2), np.bool_(True)):
        with pytest.raises(ConfigError, match="a call's timeout= must be None"):
            call_timeout(bad)
    for bad in BAD:
        with pytest.raises(ConfigError, match="a call's timeout= must be None"):
            call_timeout(bad)


def test_sync_calls(in_tmp: Path) -> None:
    seen: list[Any] = []
    with Client(CONFIG) as client:
        kv = kv_pb2_grpc.KVStub(client.channel)
        kv.Put(kv_pb2.PutRequest(key="a", value=b"1"), timeout=10)
        watch = health_pb2_grpc.HealthStub(client.channel).Watch
        for bad in BAD:
            for call in (kv.Get, kv.Get.with_call, kv.Get.future,
                         lambda request, timeout: watch(health_pb2.HealthCheckRequest(), timeout=timeout)):
                with pytest.raises(ConfigError, match=r"a call's timeout= must be None .* got"):
                    call(GET, timeout=bad)
        for endless in NO_LIMIT:
            assert kv.Get(GET, timeout=endless).value == b"1"
            assert kv.Get.future(GET, timeout=endless).result(10).value == b"1"
            assert kv.Get.with_call(GET, timeout=endless)[0].value == b"1"
        for real in OTHER_REALS:
            assert kv.Get(GET, timeout=real).value == b"1"

        # a resilience layer gets the checked value, never nan or inf (its waits overflow on inf)
        def hook(method: str, attempt: Any, timeout: float | None) -> Any:
            seen.append(timeout)
            return attempt(timeout)
        client.channel.call_hook = hook  # type: ignore[attr-defined]
        with pytest.raises(ConfigError):
            kv.Get(GET, timeout=math.nan)
        assert kv.Get(GET, timeout=math.inf).value == b"1"
        assert kv.Get.future(GET, timeout=1e300).result(10).value == b"1"
    assert seen == [NO_DEADLINE, NO_DEADLINE]


def test_async_calls(in_tmp: Path) -> None:
    seen: list[Any] = []

    async def main() -> None:
        async with AsyncClient(CONFIG) as client:
            kv = kv_pb2_grpc.KVStub(client.channel)
            await kv.Put(kv_pb2.PutRequest(key="a", value=b"1"), timeout=10)
            for bad in BAD:
                with pytest.raises(ConfigError, match=r"a call's timeout= must be None .* got"):
                    await kv.Get(GET, timeout=bad)
            for endless in NO_LIMIT:
                assert (await kv.Get(GET, timeout=endless)).value == b"1"

            async def hook(method: str, attempt: Any, timeout: float | None) -> Any:
                seen.append(timeout)
                return await attempt(timeout)
            client.channel.call_hook = hook
            for bad in BAD:
                with pytest.raises(ConfigError):
                    await kv.Get(GET, timeout=bad)
            assert (await kv.Get(GET, timeout=math.inf)).value == b"1"

    asyncio.run(main())
    assert seen == [NO_DEADLINE]


@pytest.mark.parametrize("policy", [dict(overall_timeout=math.inf), dict(per_attempt_timeout=math.inf),
                                    dict(overall_timeout=math.inf, per_attempt_timeout=math.inf)])
def test_retry_policy_inf_is_no_deadline(in_tmp: Path, policy: dict[str, float]) -> None:
    """A RetryPolicy's math.inf is no deadline, as a call's timeout=math.inf is (grpcio got inf and the
    call failed at once as a timeout)."""
    seen: list[Any] = []
    with Client(CONFIG) as client:
        kv = kv_pb2_grpc.KVStub(client.channel)
        kv.Put(kv_pb2.PutRequest(key="a", value=b"1"), timeout=10)
        install(client, retry=RetryPolicy(max_attempts=2, methods=["/proto.KV/Get"], **policy))
        inner = client.channel.call_hook  # type: ignore[attr-defined]

        def hook(method: str, attempt: Any, timeout: float | None) -> Any:
            return inner(method, lambda t: seen.append(t) or attempt(t), timeout)
        client.channel.call_hook = hook  # type: ignore[attr-defined]
        assert kv.Get(GET).value == b"1"
        assert kv.Get(GET, timeout=math.inf).value == b"1"
    assert all(t is None or t <= NO_DEADLINE for t in seen) and len(seen) == 2
