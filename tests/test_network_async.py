"""AsyncRemoteClient against real KV replicas on loopback, and the counter example's brokered callbacks
over mTLS: calls spread, fail over, wait within their deadline, stream, and a kill leaves nothing behind.

Every request loop is bounded in count; no timing assertions beyond "no call outlives its deadline".
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

from tests import netcerts
from tests.net_util import HANDSHAKE, PLUGIN_NAME, PLUGINS, Replica, aio_connection_lost, first_check_passed
from tests.resilience_util import wait_until
from tests.test_network_pool import FAST_RECONNECT, SLACK, replicas  # noqa: F401 (replicas: a fixture)

from plugbay import (AsyncRemoteClient, ClientStateError, NoEndpointsError, OutlierPolicy, PluginUnavailableError,
                     RemoteConfig)
from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc

def remote(target: str, **kw: Any) -> RemoteConfig:
    kw.setdefault("call_timeout", 2.0)
    kw.setdefault("health_interval", 0.2)
    kw.setdefault("health_timeout", 0.5)
    return RemoteConfig(target=target, handshake=HANDSHAKE, plugins=PLUGINS, insecure=True,
                        grpc_options=FAST_RECONNECT, name="kv-aio", **kw)


def aio_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("plugbay-async", "plugbay-pool"))]


def test_calls_spread_over_replicas_fail_over_from_a_dead_one_and_kill_ends_everything(
        replicas: Callable[..., Replica]) -> None:
    a, b = replicas(), replicas()
    pid_a, pid_b = str(a.proc.pid).encode(), str(b.proc.pid).encode()
    outlier = OutlierPolicy(consecutive_failures=3, base_ejection_time=1.0, max_ejection_time=5.0)

    async def main() -> None:
        client = AsyncRemoteClient(remote(f"static:///{a.address},{b.address}", outlier=outlier,
                                          health_interval=1.0))
        async with client:
            kv = await client.dispense(PLUGIN_NAME)
            first_check_passed(client, f"tcp:{a.address}", f"tcp:{b.address}")  # else all may go to one
            assert {await kv.get("__pid__") for _ in range(6)} == {pid_a, pid_b}
            assert sum(e["picks"] for e in client.metrics()["endpoints"].values()) >= 6
            await kv.put("k", b"v")
            a.kill9()
            await aio_connection_lost(client, f"tcp:{a.address}")  # else a call may break in flight, unsent again
            results: list[Any] = []
            for _ in range(12):  # calls go on at the live replica
                started = time.monotonic()
                try:
                    results.append(await kv.get("__pid__"))
                except PluginUnavailableError as exc:
                    results.append(exc)
                assert time.monotonic() - started < 2.0 + SLACK
            # the close seen, no call leaves toward the dead endpoint: each one it was picked for went to the live one
            assert results == [pid_b] * 12, results
            assert client.metrics()["resends"] >= 1
        assert wait_until(lambda: not aio_threads(), 5), aio_threads()  # idle executor threads end just after
        # the class the user made (it once said "was killed; make a new AsyncClient")
        with pytest.raises(ClientStateError, match=r"\(close\(\) or kill\(\)\); make a new AsyncRemoteClient"):
            await client.dispense(PLUGIN_NAME)

    asyncio.run(main())


def test_a_call_waits_for_an_endpoint_within_its_deadline_then_fails_typed_and_the_loop_stays_free(
        replicas: Callable[..., Replica]) -> None:
    port_holder = replicas()
    address = port_holder.address

    async def main() -> None:
        async with AsyncRemoteClient(remote(f"static:///{address}", call_timeout=1.0)) as client:
            kv = await client.dispense(PLUGIN_NAME)
            await kv.put("k", b"v")
            port_holder.kill9()
            await aio_connection_lost(client, f"tcp:{address}")  # else the call may break in flight
            ticks = 0

            async def tick() -> None:  # the loop must keep running while the call waits
                nonlocal ticks
                for _ in range(200):
                    ticks += 1
                    await asyncio.sleep(0.01)

            ticker = asyncio.ensure_future(tick())
            started = time.monotonic()
            with pytest.raises(NoEndpointsError) as err:
                await kv.get("k")
            assert time.monotonic() - started < 1.0 + SLACK
            assert "no endpoint of remote plugin 'kv-aio' could take the call" in str(err.value)
            assert ticks >= 10, ticks
            ticker.cancel()
            back = Replica(address)  # the replica comes back on its port: calls reach it again
            try:
                result: Any = None
                for _ in range(30):
                    try:
                        result = await kv.get("__pid__")
                        break
                    except PluginUnavailableError:
                        await asyncio.sleep(0.2)
                assert result == str(back.proc.pid).encode()
            finally:
                back.stop()

    asyncio.run(main())


def test_a_lone_ejected_endpoint_still_gets_async_calls_and_streams_go_through_the_pool(
        replicas: Callable[..., Replica]) -> None:
    a = replicas()
    outlier = OutlierPolicy(consecutive_failures=1, base_ejection_time=30.0)

    async def main() -> None:
        async with AsyncRemoteClient(remote(f"static:///{a.address}", outlier=outlier, call_timeout=0.5)) as client:
            kv = await client.dispense(PLUGIN_NAME)
            await kv.put("k", b"v")
            await kv.put("__slow__", b"1")
            with pytest.raises(Exception) as err:
                await kv.get("k")
            assert type(err.value).__name__ == "CallTimeout", err.value
            assert client.metrics()["ejected"] == 1
            assert [await kv.get("k") for _ in range(3)] == [b"v"] * 3
            # a server stream (health Watch) rides the pool's channel too, with the same bookkeeping
            key = f"tcp:{a.address}"
            picks = client.metrics()["endpoints"][key]["picks"]
            watch = health_pb2_grpc.HealthStub(client.channel).Watch(  # type: ignore[no-untyped-call]
                health_pb2.HealthCheckRequest(service="plugin"), timeout=5.0)
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
            # the call objects answer grpc.aio's questions: callbacks, deadline, connection, status
            call = health_pb2_grpc.HealthStub(client.channel).Check(  # type: ignore[no-untyped-call]
                health_pb2.HealthCheckRequest(service="plugin"), timeout=5.0)
            ended: list[Any] = []
            call.add_done_callback(ended.append)
            await call.wait_for_connection()
            remaining = call.time_remaining()
            assert remaining is None or 0 < remaining <= 5.0
            assert (await call).status == health_pb2.HealthCheckResponse.SERVING
            assert await call.code() == grpc.StatusCode.OK
            await asyncio.sleep(0)
            assert len(ended) == 1
            snap = client.metrics()["endpoints"][key]
            assert snap["picks"] == picks + 2  # the Watch and the Check
            assert wait_until(lambda: client.metrics()["endpoints"][key]["inflight"] == 0, 5)

    asyncio.run(main())


def test_a_call_from_another_event_loop_or_after_kill_is_refused_typed(replicas: Callable[..., Replica]) -> None:
    a = replicas()
    holder: dict[str, Any] = {}

    async def first() -> None:
        client = AsyncRemoteClient(remote(f"static:///{a.address}"))
        await client.start()
        assert client.multiplexed is False  # plain gRPC (insecure): as RemoteClient.multiplexed says
        holder["client"], holder["kv"] = client, await client.dispense(PLUGIN_NAME)
        assert await holder["kv"].get("__pid__") == str(a.proc.pid).encode()

    async def second() -> None:
        # the class the user made is named (it said "this AsyncClient's calls")
        with pytest.raises(ClientStateError, match="this AsyncRemoteClient's calls run on the event loop that"
                                                   " started it"):
            await holder["kv"].get("k")
        await holder["client"].kill()

    asyncio.run(first())
    asyncio.run(second())
    assert wait_until(lambda: not aio_threads(), 5), aio_threads()


# --- brokered callbacks (the counter example over mTLS) ------------------------------------------

def test_brokered_put_with_an_async_helper_on_each_replica(tmp_path: Path) -> None:
    from tests.test_network_broker import PLUGIN_NAME as COUNTER, CounterReplica, counter_config, host_tls

    certs = netcerts.write_set(tmp_path / "tls")
    reps = [CounterReplica(tmp_path / name, certs) for name in ("a", "b")]
    seen: list[str] = []

    class AsyncAdder:
        async def sum(self, a: int, b: int) -> int:
            seen.append("loop" if asyncio.get_running_loop() is loop else "elsewhere")
            return a + b

    async def main() -> None:
        async with AsyncRemoteClient(counter_config(reps, host_tls(certs))) as client:
            assert client.multiplexed is True and client.remote_client.multiplexed  # the async client says so too
            first_check_passed(client, *(f"tcp:{r.address}" for r in reps))  # else both may pin to one
            first, second = await client.dispense(COUNTER), await client.dispense(COUNTER)  # round robin
            await first.put("n", 5, AsyncAdder())
            await second.put("n", 7, AsyncAdder())
            assert sorted((reps[0].value("n"), reps[1].value("n"))) == ['{"Value":5}', '{"Value":7}']
            assert await first.get("n") + await second.get("n") == 12

    try:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(main())
        loop.close()
        assert seen == ["loop", "loop"]
    finally:
        for rep in reps:
            code, err = rep.stop()
            assert code == 0, err[-2000:]
            rep.tmp.rmdir()


class Counting:
    """A call layer that only records which methods ran through it."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def run_async(self, method: str, attempt: Any, timeout: float | None) -> Any:
        self.seen.append(method.rsplit("/", 1)[-1])
        return await attempt(timeout)

    def run(self, method: str, attempt: Any, timeout: float | None) -> Any:
        self.seen.append(method.rsplit("/", 1)[-1])
        return attempt(timeout)


def test_installed_layers_run_the_calls_of_brokered_stubs_too(tmp_path: Path) -> None:
    from plugbay import RemoteClient, install
    from tests.test_network_broker import PLUGIN_NAME as COUNTER, CounterReplica, counter_config, host_tls

    certs = netcerts.write_set(tmp_path / "tls")
    reps = [CounterReplica(tmp_path / "a", certs)]

    class AsyncAdder:
        async def sum(self, a: int, b: int) -> int:
            return a + b

    async def main() -> None:
        async with AsyncRemoteClient(counter_config(reps, host_tls(certs))) as client:
            layer = Counting()
            stub = await client.dispense(COUNTER)  # dispensed before install(): the layer still applies
            install(client, retry=layer)  # type: ignore[arg-type]
            await stub.put("n", 5, AsyncAdder())
            assert await stub.get("n") == 5
            assert layer.seen == ["Put", "Get"]

    try:
        asyncio.run(main())
        with RemoteClient(counter_config(reps, host_tls(certs))) as sync:
            layer = Counting()
            install(sync, retry=layer)  # type: ignore[arg-type]
            assert sync.dispense(COUNTER).get("n") == 5
            assert layer.seen == ["Get"]
    finally:
        for rep in reps:
            code, err = rep.stop()
            assert code == 0, err[-2000:]
            rep.tmp.rmdir()


def test_an_endpoint_that_leaves_discovery_has_its_grpc_aio_connection_closed(
        replicas: Callable[..., Replica]) -> None:
    # discovery drops an endpoint: its grpc.aio connection closes once its calls end (no socket left open)
    a, b = replicas(), replicas()

    async def main() -> None:
        async with AsyncRemoteClient(remote(f"static:///{a.address},{b.address}")) as client:
            kv = await client.dispense(PLUGIN_NAME)
            first_check_passed(client, f"tcp:{a.address}", f"tcp:{b.address}")  # else the calls may meet one
            for _ in range(4):
                await kv.get("__pid__")
            endpoints = client._endpoints
            assert endpoints is not None and len(endpoints._channels) == 2
            pool = client.remote_client.pool
            pool._on_change([m.endpoint for m in pool._members.values() if m.key == f"tcp:{b.address}"])
            for _ in range(30):  # closed without any further call coming
                if list(endpoints._channels) == [f"tcp:{b.address}"]:
                    break
                await asyncio.sleep(0.1)
            assert list(endpoints._channels) == [f"tcp:{b.address}"]
            for _ in range(4):
                assert await kv.get("__pid__") == str(b.proc.pid).encode()
            for _ in range(50):
                if not endpoints._retiring:
                    break
                await asyncio.sleep(0.1)
            assert not endpoints._retiring

    asyncio.run(main())


def test_close_cancels_the_calls_of_a_connection_still_draining_as_the_sync_close_does(
        replicas: Callable[..., Replica]) -> None:
    # calls stuck on A (10 s each in the plugin); A leaves discovery, so its connection drains (up to
    # drain_timeout, set long); close() then means "now": the stuck calls are cancelled, not waited for
    a, b = replicas(), replicas()
    with grpc.insecure_channel(a.address) as direct:
        kv_a = PLUGINS[PLUGIN_NAME].grpc_client(None, direct)
        kv_a.put("x", b"from-a")
        kv_a.put("__slow__", b"4")

        async def main() -> list[object]:
            client = AsyncRemoteClient(remote(f"static:///{a.address},{b.address}", call_timeout=60.0))
            await client.start()
            try:
                kv = await client.dispense(PLUGIN_NAME)

                async def get() -> object:
                    try:
                        return await kv.get("x")
                    except grpc.RpcError as exc:
                        return exc.code()

                calls = [asyncio.ensure_future(get()) for _ in range(4)]
                for _ in range(200):  # until each call has either ended (on B: NOT_FOUND) or reached A
                    arrived = int(await asyncio.to_thread(kv_a.get, "__calls__"))
                    if arrived + sum(c.done() for c in calls) == len(calls):
                        break
                    await asyncio.sleep(0.05)
                stuck = [c for c in calls if not c.done()]
                assert stuck, "no call reached A"
                pool = client.remote_client.pool
                pool.drain_timeout = 60.0  # far longer than the stuck calls (10 s): an unfixed close waits them out
                pool._on_change([m.endpoint for m in pool._members.values() if m.key == f"tcp:{b.address}"])
                endpoints = client._endpoints
                assert endpoints is not None
                for _ in range(100):  # the watch retires A's connection
                    if endpoints._retiring:
                        break
                    await asyncio.sleep(0.05)
                assert endpoints._retiring
            finally:
                await asyncio.wait_for(client.close(), 30)
            return await asyncio.wait_for(asyncio.gather(*stuck), 30)

        outcomes = asyncio.run(main())
    # cancelled by the close (a value would mean close() waited until the plugin answered)
    assert outcomes and all(o == grpc.StatusCode.CANCELLED for o in outcomes), outcomes


def test_calls_cut_when_their_endpoint_leaves_discovery_fail_typed_and_a_caller_cancel_stays_one(
        replicas: Callable[..., Replica]) -> None:
    # A leaves discovery with calls in flight on it; grpc.aio cancels them when its connection's close
    # runs out of drain_timeout: those are no cancel of the caller's, they fail typed (not sent again);
    # a cancel the caller asked for, on the same connection meanwhile, stays a CancelledError
    a = replicas()
    with grpc.insecure_channel(a.address) as direct:
        kv_a = PLUGINS[PLUGIN_NAME].grpc_client(None, direct)
        kv_a.put("x", b"from-a")
        kv_a.put("__slow__", b"2")  # the next two Gets sleep 10 s

        async def main() -> None:
            async with AsyncRemoteClient(remote(f"static:///{a.address}", call_timeout=30.0)) as client:
                kv = await client.dispense(PLUGIN_NAME)
                health = health_pb2_grpc.HealthStub(client.channel)  # type: ignore[no-untyped-call]
                watches = [health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30) for _ in range(2)]
                for watch in watches:
                    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
                cut, mine = asyncio.ensure_future(kv.get("x")), asyncio.ensure_future(kv.get("x"))
                assert await asyncio.to_thread(wait_until, lambda: kv_a.get("__calls__") == b"2", 5)
                pool = client.remote_client.pool
                pool.drain_timeout = 2.0
                pool._on_change([])
                endpoints = client._endpoints
                assert endpoints is not None
                for _ in range(100):  # the watch retires A's connection: it drains from now
                    if endpoints._retiring:
                        break
                    await asyncio.sleep(0.05)
                assert endpoints._retiring
                mine.cancel()
                watches[1].cancel()
                with pytest.raises(asyncio.CancelledError):
                    await mine
                with pytest.raises(asyncio.CancelledError):
                    await watches[1].read()
                for step in (cut, watches[0].read()):
                    with pytest.raises(PluginUnavailableError) as failed:
                        await asyncio.wait_for(step, 10)
                    assert isinstance(failed.value, grpc.RpcError)
                    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
                    assert f"endpoint tcp:{a.address} left discovery; the call was cut after drain_timeout (2 s)" \
                        in str(failed.value)

        asyncio.run(main())
        assert kv_a.get("__calls__") == b"2"  # not sent again


def test_grpc_status_of_an_application_error_passes_through(replicas: Callable[..., Replica]) -> None:
    a = replicas()

    async def main() -> None:
        async with AsyncRemoteClient(remote(f"static:///{a.address}")) as client:
            kv = await client.dispense(PLUGIN_NAME)
            with pytest.raises(grpc.RpcError) as err:
                await kv.get("missing-key")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert client.metrics()["ejections"] == 0

    asyncio.run(main())


def test_an_async_supervisor_takes_a_remote_config(replicas: Callable[..., Replica]) -> None:
    from plugbay import AsyncSupervisor

    a, b = replicas(), replicas()

    async def main() -> None:
        async with AsyncSupervisor(remote(f"static:///{a.address},{b.address}"), health_interval=None) as sup:
            kv = await sup.dispense(PLUGIN_NAME)
            first_check_passed(sup.current_client, f"tcp:{a.address}", f"tcp:{b.address}")  # else all to one
            assert {await kv.get("__pid__") for _ in range(6)} == {str(r.proc.pid).encode() for r in (a, b)}

    asyncio.run(main())
    assert wait_until(lambda: not aio_threads(), 5), aio_threads()

