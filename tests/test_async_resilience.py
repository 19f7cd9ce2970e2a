"""RetryPolicy and CircuitBreaker on an AsyncClient, against the fault-switch KV plugin (a real process).

Each test runs its own event loop (asyncio.run) with a hang guard, as in test_async_client.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from tests.resilience_util import PLUGIN_NAME, faulty_config  # also puts examples/kv on sys.path

from plugbay import (AsyncClient, CallTimeoutError, CircuitBreaker, CircuitOpenError, ConfigError,  # noqa: E402
                     RetryPolicy, idempotent)
from plugbay.core.resilience.calls import install  # noqa: E402
from plugbay.core.resilience.circuit import CLOSED, HALF_OPEN, OPEN  # noqa: E402

GUARD = 60.0
_T = TypeVar("_T")


def run(coro: Awaitable[_T]) -> _T:
    async def guarded() -> _T:
        return await asyncio.wait_for(coro, GUARD)
    return asyncio.run(guarded())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _calls(client: AsyncClient) -> int:
    hook = client.channel.call_hook
    install(client)  # the counter read itself must not be retried or counted twice
    try:
        kv = await client.dispense(PLUGIN_NAME)
        return int(await kv.get("__calls__"))
    finally:
        client.channel.call_hook = hook


def test_an_allowlisted_call_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    retries: list[tuple[str, int]] = []

    async def main() -> None:
        async with AsyncClient(faulty_config(tmp_path, call_timeout=10.0)) as client:
            kv = await client.dispense(PLUGIN_NAME)
            await kv.put("k", b"v")
            await kv.put("__fail__", b"2")
            before = await _calls(client)
            install(client, retry=RetryPolicy(max_attempts=4, initial_backoff=0.01, methods=["/proto.KV/Get"],
                                              on_retry=lambda m, n, exc, sleep: retries.append((m, n))))
            assert await kv.get("k") == b"v"
            assert await _calls(client) - before == 3  # two injected failures, then the answer
            await kv.put("__fail__", b"1")  # Put is not on the allowlist: once
            await kv.put("__fail__", b"5")
            with pytest.raises(grpc.RpcError) as err:
                await kv.get("k")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "gave up after 4 of 4 attempt(s)" in "\n".join(err.value.__notes__)

    run(main())
    assert retries[:2] == [("/proto.KV/Get", 1), ("/proto.KV/Get", 2)]


def test_a_per_attempt_timeout_that_ran_out_on_every_try_says_so(tmp_path: Path) -> None:
    async def main() -> str:
        async with AsyncClient(faulty_config(tmp_path, call_timeout=10.0)) as client:
            kv = await client.dispense(PLUGIN_NAME)
            await kv.put("__slow__", b"2")
            install(client, retry=RetryPolicy(max_attempts=2, initial_backoff=0.01, per_attempt_timeout=0.3,
                                              methods=["Get"]))
            with pytest.raises(CallTimeoutError) as err:
                await kv.get("k")
            return str(err.value)

    said = run(main())
    assert "on try 2 of 2" in said and "each try was bounded by 0.3s (RetryPolicy.per_attempt_timeout)" in said
    assert "RetryPolicy(overall_timeout=...)" in said and "Pass a larger timeout=" not in said, said


def test_idempotent_marks_only_the_task_inside_the_block(tmp_path: Path) -> None:
    # A thread-local mark would cover every task of the loop's thread: the task outside the
    # block would be retried too.
    async def main() -> None:
        async with AsyncClient(faulty_config(tmp_path, call_timeout=10.0)) as client:
            kv = await client.dispense(PLUGIN_NAME)
            await kv.put("k", b"v")
            install(client, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01))
            inside, done = asyncio.Event(), asyncio.Event()

            async def marked() -> bytes:
                with idempotent():
                    inside.set()
                    await done.wait()
                    await kv.put("__fail__", b"1")
                    return await kv.get("k")  # retried: inside the block

            async def unmarked() -> None:
                await inside.wait()
                try:
                    await kv.put("__fail__", b"1")
                    before = await _calls(client)
                    with pytest.raises(grpc.RpcError) as err:
                        await kv.get("k")
                    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                    assert await _calls(client) - before == 1
                finally:
                    done.set()

            got, _ = await asyncio.gather(marked(), unmarked())
            assert got == b"v"

    run(main())


def test_a_breaker_opens_fails_fast_unsent_and_closes_after_a_probe(tmp_path: Path) -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=2, window=60, open_for=5, clock=clock)

    async def main() -> None:
        async with AsyncClient(faulty_config(tmp_path, call_timeout=10.0)) as client:
            kv = await client.dispense(PLUGIN_NAME)
            await kv.put("k", b"v")
            await kv.put("__fail__", b"100")
            install(client, breaker=breaker, retry=RetryPolicy(max_attempts=10, initial_backoff=0.01,
                                                              all_idempotent=True))
            assert breaker.name == client.name  # the default name became the client's
            before = await _calls(client)
            with pytest.raises(CircuitOpenError) as err:
                await kv.get("k")
            assert isinstance(err.value, grpc.RpcError) and err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert breaker.state == OPEN
            assert await _calls(client) - before == 2  # the retries ended at the open breaker
            with pytest.raises(CircuitOpenError):  # refused too: the breaker sees every unary call
                await kv.put("__fail__", b"0")
            assert breaker.rejected_count == 2
            install(client)
            await kv.put("__fail__", b"0")
            install(client, breaker=breaker)
            clock.now += 5
            assert await kv.get("k") == b"v"  # the probe
            assert breaker.state == CLOSED

    run(main())


def test_a_cancelled_probe_frees_the_probe_slot(tmp_path: Path) -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, window=60, open_for=5, clock=clock)

    async def main() -> None:
        async with AsyncClient(faulty_config(tmp_path, call_timeout=30.0)) as client:
            kv = await client.dispense(PLUGIN_NAME)
            await kv.put("k", b"v")
            breaker.trip("test")
            await kv.put("__slow__", b"1")  # the probe is stuck in the plugin for 10 s
            install(client, breaker=breaker)
            clock.now += 5
            probe = asyncio.ensure_future(kv.get("k"))
            await asyncio.sleep(0.3)
            assert breaker.state == HALF_OPEN and not probe.done()
            with pytest.raises(CircuitOpenError, match="a probe call is already in flight"):
                await kv.get("k")
            probe.cancel()
            with pytest.raises(asyncio.CancelledError):
                await probe
            assert await kv.get("k") == b"v"  # the slot was given back: this call is the next probe
            assert breaker.state == CLOSED

    run(main())


def test_install_refuses_an_unstarted_client_and_a_sync_only_layer(tmp_path: Path) -> None:
    class SyncOnly:
        def run(self, method: str, attempt: Any, timeout: float | None) -> Any:
            return attempt(timeout)

    async def main() -> None:
        client = AsyncClient(faulty_config(tmp_path))
        with pytest.raises(ConfigError, match="needs a started client.*await start"):
            install(client, retry=RetryPolicy())
        async with client:
            with pytest.raises(ConfigError, match="SyncOnly is not a call layer for this client.*run_async"):
                install(client, retry=SyncOnly())
            assert client.channel.call_hook is None
            install(client, retry=RetryPolicy())
            kv = await client.dispense(PLUGIN_NAME)
            call = kv._stub.Get  # the layered call object is only awaited
            from kvproto import kv_pb2

            pending = call(kv_pb2.GetRequest(key="missing"))
            with pytest.raises(AttributeError, match="awaited for its response.*no 'initial_metadata'"):
                pending.initial_metadata()
            with pytest.raises(grpc.RpcError) as err:
                await pending
            assert err.value.code() == grpc.StatusCode.NOT_FOUND and pending.done()
            await kv.put("__slow__", b"1")  # stuck in the plugin for 10 s: cancelled, as a grpc.aio call is
            stuck = call(kv_pb2.GetRequest(key="missing"))
            await asyncio.sleep(0.2)
            assert not stuck.done() and stuck.cancel()
            with pytest.raises(asyncio.CancelledError):
                await stuck
            assert stuck.cancelled()

    run(main())
