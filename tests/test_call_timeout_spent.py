"""What a call whose deadline is spent before a try says, and what it may not hide.

- A pool call whose endpoint was picked only after its deadline (pick() waits for one) is not sent:
  CallTimeoutError, sent False, the key unset, and the endpoint not charged a failure. The pool sent it
  with a 1 ms sliver before, and the plugin stored the Put.
- A retry whose deadline ran out after a try that was sent says sent True, is raised from that try's
  error and names it; a spent deadline with no try sent stays the unsent refusal.
- A refused asyncio call answers grpc.aio's Call methods as a real timed-out call does.
- A killed Client's (or a wrong event loop's) error comes before a timeout=0's; so does a stopped
  Supervisor's (or AsyncSupervisor's): it was stopped, start a new one.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.net_util import Replica
from tests.test_call_timeout_zero import CONFIG, _remote, refused, unset
from tests.test_network_pool import replicas  # noqa: F401 (a fixture)

from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402 (test_call_timeout_zero put examples/kv on the path)

from plugbay import (AsyncClient, AsyncRemoteClient, AsyncSupervisor, CallTimeoutError, Client,  # noqa: E402
                     ClientStateError, ConfigError, RemoteClient, RetryPolicy, Supervisor, install)
from plugbay.core.host.callerrors import ClientClosed  # noqa: E402
from plugbay.core.host.deadline import call_timeout  # noqa: E402
from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc  # noqa: E402


def _late(pool: Any) -> None:
    """The pool hands out an endpoint only once the call's deadline passed, as when one became pickable
    just after it (try_pick() is what pick() and the asyncio side ask)."""
    original = pool.try_pick

    def late(deadline: float, exclude: set[str], pin: str | None = None) -> Any:
        time.sleep(max(0.0, deadline - time.monotonic()) + 0.02)
        return original(deadline, exclude, pin)
    pool.try_pick = late


def _charged(pool: Any) -> list[tuple[int, int, bool]]:
    return [(e["failures"], e["inflight"], e["ejected"]) for e in pool.metrics()["endpoints"].values()]


def test_pool_does_not_send_a_call_picked_after_its_deadline(
        replicas: Callable[..., Replica]) -> None:  # noqa: F811
    address = replicas().address
    with RemoteClient(_remote(address)) as client:
        kv = kv_pb2_grpc.KVStub(client.channel)
        kv.Put(kv_pb2.PutRequest(key="w", value=b"1"), timeout=10)
        pool = client.pool
        _late(pool)
        direct = pool.unary_unary("/proto.KV/Put", kv_pb2.PutRequest.SerializeToString, kv_pb2.Empty.FromString)
        calls: list[Callable[[str], Any]] = [
            lambda key: kv.Put(kv_pb2.PutRequest(key=key, value=b"1"), timeout=0.2),
            lambda key: kv.Put.future(kv_pb2.PutRequest(key=key, value=b"1"), timeout=0.2).result(),
            lambda key: direct(kv_pb2.PutRequest(key=key, value=b"1"), timeout=0.2),
            lambda key: list(health_pb2_grpc.HealthStub(client.channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=0.2)),
        ]
        for i, call in enumerate(calls * 3):
            with pytest.raises(CallTimeoutError) as info:
                call(f"p{i}")
            refused(info.value, "deadline was spent before an endpoint")
        del pool.try_pick  # picks on time again
        for i in range(len(calls) * 3):
            unset(kv, f"p{i}")
        assert _charged(client.pool) == [(0, 0, False)], client.pool.metrics()

    async def main() -> None:
        async with AsyncRemoteClient(_remote(address)) as client:
            kv = kv_pb2_grpc.KVStub(client.channel)
            await kv.Put(kv_pb2.PutRequest(key="w", value=b"1"), timeout=10)
            pool = client.remote_client.pool
            _late(pool)
            for i in range(6):
                with pytest.raises(CallTimeoutError) as info:
                    await kv.Put(kv_pb2.PutRequest(key=f"a{i}", value=b"1"), timeout=0.2)
                refused(info.value, "deadline was spent before an endpoint")
                with pytest.raises(CallTimeoutError) as info:
                    async for _ in health_pb2_grpc.HealthStub(client.channel).Watch(
                            health_pb2.HealthCheckRequest(), timeout=0.2):
                        pass
                refused(info.value, "deadline was spent before an endpoint")
            del pool.try_pick
            for i in range(6):
                with pytest.raises(grpc.RpcError) as got:
                    await kv.Get(kv_pb2.GetRequest(key=f"a{i}"), timeout=10)
                assert got.value.code() == grpc.StatusCode.NOT_FOUND
            assert _charged(pool) == [(0, 0, False)], pool.metrics()
    asyncio.run(main())


def _policy(on_retry: Callable[..., None]) -> RetryPolicy:
    return RetryPolicy(max_attempts=2, initial_backoff=0.01, methods=["/proto.KV/Get"],
                       retry_on=frozenset({grpc.StatusCode.NOT_FOUND}), on_retry=on_retry)


def _spent_after_a_sent_try(exc: BaseException) -> None:
    assert isinstance(exc, CallTimeoutError) and exc.sent is True, exc  # type: ignore[attr-defined]
    assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    cause = exc.__cause__
    assert isinstance(cause, grpc.RpcError) and cause.code() == grpc.StatusCode.NOT_FOUND, repr(cause)
    text = str(exc)
    assert "try 2 of 2" in text and "NOT_FOUND" in text and "no value stored for key 'nope'" in text, text
    assert "may have run on the plugin" in text and "did not send it" not in text, text


def test_retry_spent_after_a_sent_try_says_sent_and_chains(in_tmp: Path) -> None:
    with Client(CONFIG) as client:
        kv = kv_pb2_grpc.KVStub(client.channel)
        install(client, retry=_policy(lambda *a: time.sleep(1.2)))
        with pytest.raises(CallTimeoutError) as info:
            kv.Get(kv_pb2.GetRequest(key="nope"), timeout=1.0)
        _spent_after_a_sent_try(info.value)

    async def main() -> None:
        async with AsyncClient(CONFIG) as client:
            kv = kv_pb2_grpc.KVStub(client.channel)
            install(client, retry=_policy(lambda *a: time.sleep(1.2)))
            with pytest.raises(CallTimeoutError) as info:
                await kv.Get(kv_pb2.GetRequest(key="nope"), timeout=1.0)
            _spent_after_a_sent_try(info.value)
    asyncio.run(main())


async def _timed_out(kv: Any) -> Any:
    """A real grpc.aio call that failed DEADLINE_EXCEEDED (a 1 ns deadline: the call races it, so ask again)."""
    for _ in range(1000):
        call = kv.Get(kv_pb2.GetRequest(key="x"), timeout=1e-9)
        try:
            await call
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return call
    pytest.fail("no call with a 1 ns deadline timed out in 1000")


async def _answers(call: Any) -> dict[str, Any]:
    seen: list[Any] = []
    call.add_done_callback(seen.append)
    await asyncio.sleep(0.05)  # grpc.aio may run it from the loop
    return {"done": call.done(), "cancelled": call.cancelled(), "cancel": call.cancel(),
            "time_remaining": call.time_remaining(), "code": await call.code(),
            "initial_metadata": await call.initial_metadata(), "trailing_metadata": await call.trailing_metadata(),
            "debug_error_string": (await call.debug_error_string()).split(":")[0],
            "details_type": type(await call.details()), "callback": len(seen)}


def test_refused_aio_call_answers_as_a_timed_out_one(in_tmp: Path) -> None:
    async def main() -> None:
        async with AsyncClient(CONFIG) as client:
            kv = kv_pb2_grpc.KVStub(client.channel)
            real = await _answers(await _timed_out(kv))
            refused_call = kv.Put(kv_pb2.PutRequest(key="r", value=b"1"), timeout=0)
            mine = await _answers(refused_call)
            assert mine == real, (mine, real)
            assert "did not send it" in await refused_call.details()
            with pytest.raises(CallTimeoutError):
                await refused_call.wait_for_connection()
    asyncio.run(main())


def test_closed_client_and_wrong_loop_come_before_timeout_zero(in_tmp: Path) -> None:
    client = Client(CONFIG)
    client.start()
    kv = kv_pb2_grpc.KVStub(client.channel)
    install(client, retry=RetryPolicy(all_idempotent=True))
    client.kill()
    put = kv_pb2.PutRequest(key="k", value=b"1")
    watch = health_pb2_grpc.HealthStub(client.channel).Watch
    calls: list[Callable[[float], Any]] = [
        lambda t: kv.Get(kv_pb2.GetRequest(key="k"), timeout=t), lambda t: kv.Put(put, timeout=t),
        lambda t: kv.Put.with_call(put, timeout=t), lambda t: kv.Put.future(put, timeout=t).result(),
        lambda t: list(watch(health_pb2.HealthCheckRequest(), timeout=t))]
    for call in calls:
        for timeout in (0, 1):
            with pytest.raises(ClientClosed):
                call(timeout)
    with pytest.raises(ConfigError, match="a number of seconds > 0"):
        call_timeout(-1)

    async def main() -> None:
        async with AsyncClient(CONFIG) as ac:
            plain = kv_pb2_grpc.KVStub(ac.channel)

            def elsewhere(timeout: float | None) -> BaseException | None:
                async def go() -> BaseException | None:
                    try:
                        await plain.Put(put, timeout=timeout)
                    except BaseException as exc:  # noqa: BLE001 (which error it was is the point)
                        return exc
                    return None
                got: list[BaseException | None] = []
                thread = threading.Thread(target=lambda: got.append(asyncio.run(go())))
                thread.start()
                thread.join(60)
                return got[0]
            for hooked in (False, True):
                if hooked:
                    install(ac, retry=RetryPolicy(all_idempotent=True))
                for timeout in (None, 0):
                    error = elsewhere(timeout)
                    assert isinstance(error, ClientStateError) and "loop" in str(error), (hooked, timeout, error)
            calls = [plain.Put(put, timeout=0), plain.Put(put, timeout=1)]
            await ac.kill()
            calls += [plain.Put(put, timeout=0), plain.Put(put, timeout=1)]
            for call in calls[2:]:
                with pytest.raises(ClientClosed):
                    await call
            for call in calls[:2]:  # made before the kill: the refusal, and a call the kill ended or that ran
                try:
                    await call
                except grpc.RpcError:
                    pass
    asyncio.run(main())



def test_a_stopped_supervisors_error_comes_before_timeout_zero(in_tmp: Path) -> None:
    """A timeout=0 call on a stopped Supervisor got the refusal of a call with no time left, and on a stopped
    AsyncSupervisor the killed Client's advice (start a new Client): a call with time left, and the stub's
    every call, is told the Supervisor was stopped (start a new one)."""
    put = kv_pb2.PutRequest(key="s", value=b"1")
    with Supervisor(CONFIG, health_interval=None) as sup:
        kv = kv_pb2_grpc.KVStub(sup.channel)
        kv.Put(put, timeout=10)
    for call in (kv.Put, kv.Put.with_call, lambda r, timeout: kv.Put.future(r, timeout=timeout).result()):
        for timeout in (0, 1):
            with pytest.raises(ClientStateError, match="the Supervisor of plugin 'plugin' was stopped") as info:
                call(put, timeout=timeout)
            assert getattr(info.value, "sent", False) is False, info.value

    async def main() -> None:
        asup = AsyncSupervisor(CONFIG, health_interval=None)
        await asup.start()
        akv = kv_pb2_grpc.KVStub(asup.channel)
        await akv.Put(put, timeout=10)
        await asup.stop()
        for timeout in (0, 1):
            with pytest.raises(ClientStateError, match="the AsyncSupervisor of plugin 'plugin' was stopped") as info:
                await akv.Put(put, timeout=timeout)
            assert getattr(info.value, "sent", False) is False, info.value
    asyncio.run(main())
