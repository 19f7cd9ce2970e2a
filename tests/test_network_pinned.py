"""Each dispense() of a brokering remote plugin pins a new stub to one endpoint; the client kept
every one of those stubs' channels until close, so a host that dispenses per request grew without
bound. A dropped stub's channel goes now; one still held is still closed with the client.
Real counter replicas over mTLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gc
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugbay import AsyncRemoteClient, GRPCBroker, RemoteClient, Supervisor
from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.core.host.channel import ClientClosed
from plugbay.errors import ClientStateError, PlugbayError
from tests import netcerts
from tests.test_network_broker import PLUGIN_NAME, Adder, CounterPlugin, CounterReplica, counter_config, host_tls, \
    remote, wait_until

DISPENSES = 300


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[tuple[CounterReplica, netcerts.CertSet]]:
    certs = netcerts.write_set(tmp_path / "tls")
    rep = CounterReplica(tmp_path / "r", certs)
    yield rep, certs
    code, err = rep.stop()
    assert code == 0, err[-2000:]
    rep.tmp.rmdir()


def test_dropped_stubs_do_not_pile_up_in_the_client(replica: tuple[CounterReplica, netcerts.CertSet]) -> None:
    rep, certs = replica
    with remote([rep], host_tls(certs)) as client:
        kept = client.dispense(PLUGIN_NAME)
        for _ in range(DISPENSES):
            client.dispense(PLUGIN_NAME).get  # noqa: B018 (made and dropped, as a per-request stub is)
        gc.collect()
        assert len(client._pinned) < 10, len(client._pinned)
        kept.put("n", 2, Adder())
        assert kept.get("n") == 2
    with pytest.raises(PlugbayError):  # the stub still held was closed with its client
        kept.get("n")


def test_dropped_async_stubs_do_not_pile_up_in_the_client(replica: tuple[CounterReplica, netcerts.CertSet]) -> None:
    rep, certs = replica

    async def main() -> None:
        async with AsyncRemoteClient(counter_config([rep], host_tls(certs))) as client:
            kept = await client.dispense(PLUGIN_NAME)
            for _ in range(DISPENSES):
                await client.dispense(PLUGIN_NAME)
            gc.collect()
            assert len(client._more_channels) < 10, len(client._more_channels)
            hooks = client.remote_client.channel.on_close_current
            assert len(hooks) < 10, len(hooks)
            await kept.put("n", 3, Adder())
            assert await kept.get("n") == 3
        with pytest.raises(PlugbayError):
            await kept.get("n")

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 120))  # hang detection only
    finally:
        loop.close()


class _HeldAdder(Adder):
    """An AddHelper whose sum waits until released: the Put that called back stays in flight meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def sum(self, a: int, b: int) -> int:
        self.entered.set()
        self.release.wait(30)
        return super().sum(a, b)


def _ended_by(client: object, how: str, call: Callable[[], object], in_flight: Callable[[], bool]) -> object:
    """What ``call()``, running on another thread, ended with once ``how`` (close, kill or a Supervisor's
    stop) was asked of ``client`` while the call was in flight (``in_flight()`` turned True)."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # noqa: BLE001 (what the call ended with is the point)
            outcome.append(exc)

    caller = threading.Thread(target=run, name="test-in-flight")
    caller.start()
    try:
        deadline = time.monotonic() + 30
        while not in_flight() and caller.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert in_flight(), f"the call never got under way (it ended: {outcome})"
    finally:
        getattr(client, how)()
    caller.join(30)  # hang detection only
    assert not caller.is_alive()
    return outcome[0]


def _closed_in_flight(error: object, cls: str = "RemoteClient") -> None:
    """``error`` is what a call in flight gets from close() or kill() with brokered=False and on the
    asyncio client: ClientClosed, sent, saying the plugin may have run it."""
    assert isinstance(error, ClientClosed), repr(error)
    assert error.sent  # its code() is the failure's own: CANCELLED, or UNAVAILABLE from the callback's server stop
    said = str(error)
    # a RemoteClient's words: closed or killed, and the class to make anew (it once said "(the Client was
    # killed) ... start a new Client", a launched Client's)
    assert "remote plugin 'counter' was closed (close() or kill()) while the call was in flight; the plugin may" \
        f" have run the call. Make a new {cls} to call it again" in said, said


@pytest.mark.parametrize("how", ["close", "kill"])
def test_close_or_kill_during_a_brokered_call_ends_it_client_closed(
        replica: tuple[CounterReplica, netcerts.CertSet], how: str) -> None:
    rep, certs = replica
    client = remote([rep], host_tls(certs))
    adder = _HeldAdder()
    try:
        client.start()
        assert client.multiplexed
        kv = client.dispense(PLUGIN_NAME)
        error = _ended_by(client, how, lambda: kv.put("n", 1, adder), adder.entered.is_set)
    finally:
        adder.release.set()
        client.close()
    _closed_in_flight(error)


def test_a_supervisors_stop_is_what_stubs_pinned_by_its_clients_dispense_are_told(
        replica: tuple[CounterReplica, netcerts.CertSet]) -> None:
    """A Supervisor over a RemoteClient: its stop() told the main channel's calls that the Supervisor was
    stopped (start a new one), but a stub pinned by the client's multiplexed dispense() got the client's
    own words (make a new RemoteClient), in flight and after."""
    rep, certs = replica
    sup = Supervisor(counter_config([rep], host_tls(certs)), health_interval=None)
    adder = _HeldAdder()
    try:
        sup.start()
        assert isinstance(sup.client, RemoteClient) and sup.client.multiplexed
        kv = sup.client.dispense(PLUGIN_NAME)
        error = _ended_by(sup, "stop", lambda: kv.put("n", 1, adder), adder.entered.is_set)
    finally:
        adder.release.set()
        sup.stop()
    stopped = f"the Supervisor of plugin {sup.name!r} was stopped"
    assert isinstance(error, ClientClosed) and f"{stopped} while the call was in flight" in str(error), error
    with pytest.raises(ClientClosed) as after:
        kv.get("n")
    assert f"{stopped}, which ended the plugin; the call was not sent" in str(after.value), after.value


class _ChannelPlugin(CounterPlugin):
    """dispense() hands out the pinned channel itself, to make any call on it."""

    def grpc_client(self, broker: GRPCBroker, channel: grpc.Channel) -> Any:
        return channel


@pytest.mark.parametrize("how", ["close", "kill"])
def test_close_or_kill_during_a_stream_on_a_pinned_channel_ends_it_client_closed(
        replica: tuple[CounterReplica, netcerts.CertSet], how: str) -> None:
    rep, certs = replica
    cfg = counter_config([rep], host_tls(certs))
    cfg.plugins = {PLUGIN_NAME: _ChannelPlugin()}
    client = RemoteClient(cfg)
    try:
        client.start()
        assert client.multiplexed
        channel = client.dispense(PLUGIN_NAME)
        # a health Watch sends the status, then waits for a change that does not come: in flight until closed
        watch = health_pb2_grpc.HealthStub(channel).Watch(  # type: ignore[no-untyped-call]
            health_pb2.HealthCheckRequest(service="plugin"), timeout=60)
        next(watch)
        waiting = threading.Event()

        def second() -> object:
            waiting.set()
            return next(watch)

        error = _ended_by(client, how, second, waiting.is_set)
    finally:
        client.close()
    _closed_in_flight(error)


@pytest.mark.parametrize("how", ["close", "kill"])
def test_close_or_kill_during_an_async_brokered_call_ends_it_client_closed_too(
        replica: tuple[CounterReplica, netcerts.CertSet], how: str) -> None:
    rep, certs = replica

    class HeldAdder:
        def __init__(self) -> None:
            self.entered, self.release = asyncio.Event(), asyncio.Event()

        async def sum(self, a: int, b: int) -> int:
            self.entered.set()
            await self.release.wait()
            return a + b

    async def main() -> object:
        client = AsyncRemoteClient(counter_config([rep], host_tls(certs)))
        adder = HeldAdder()
        try:
            await client.start()
            assert client.multiplexed
            kv = await client.dispense(PLUGIN_NAME)
            put = asyncio.ensure_future(kv.put("n", 1, adder))
            await asyncio.wait([put, asyncio.ensure_future(adder.entered.wait())],
                               return_when=asyncio.FIRST_COMPLETED)
            assert adder.entered.is_set(), put
            await getattr(client, how)()
            return (await asyncio.gather(put, return_exceptions=True))[0]
        finally:
            adder.release.set()
            await client.kill()

    loop = asyncio.new_event_loop()
    try:
        error = loop.run_until_complete(asyncio.wait_for(main(), 120))  # hang detection only
    finally:
        loop.close()
    _closed_in_flight(error, "AsyncRemoteClient")


def _closed_waiting(error: object, cls: str = "RemoteClient") -> None:
    """``error`` is what a call waiting for an endpoint gets from close(): ClientClosed, unsent, saying so,
    as a call made after close() does (not the closed pool's NoEndpoints)."""
    assert isinstance(error, ClientClosed), repr(error)
    assert error.sent is False, error
    said = str(error)
    assert "remote plugin 'counter' was closed (close() or kill()); the call was not sent: the plugin did not get" \
        f" the call. Make a new {cls} to call it again" in said, said
    assert "start a new Client" not in said and "(the Client was killed)" not in said, said


def _no_endpoint_left(client: RemoteClient) -> bool:
    return client.metrics()["available"] == 0


def _lose(rep: CounterReplica, pinned: bool) -> None:
    """The only replica lost to calls: killed; for a stub pinned to it (brokered), stopped (SIGSTOP), so its
    health checks fail while its session stays up: a pinned call whose replica's session ended fails at once
    (test_network_pinned_gone), one whose replica only fails its checks waits for it."""
    if pinned:
        rep.proc.send_signal(signal.SIGSTOP)
        return
    rep.proc.kill()
    rep.proc.wait(15)


@pytest.mark.parametrize("kind", ["unary", "stream"])
@pytest.mark.parametrize("brokered", [True, False])
def test_close_during_a_call_waiting_for_an_endpoint_ends_it_client_closed_unsent(
        tmp_path: Path, brokered: bool, kind: str) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    rep = CounterReplica(tmp_path / "r", certs)
    client = remote([rep], host_tls(certs), brokered=brokered, call_timeout=30)
    try:
        client.start()
        assert client.multiplexed is brokered
        kv = client.dispense(PLUGIN_NAME)
        with pytest.raises(grpc.RpcError) as first:
            kv.get("n")
        assert first.value.code() == grpc.StatusCode.NOT_FOUND  # the plugin answers (nothing stored yet)
        _lose(rep, brokered)  # the only replica: the next call waits for an endpoint (call_timeout)
        assert wait_until(lambda: _no_endpoint_left(client), 30)
        began: list[float] = []

        def call() -> object:
            began.append(time.monotonic())
            if kind == "stream":  # a stream waits for its endpoint when it is made, not at its first read
                return next(health_pb2_grpc.HealthStub(client.channel).Watch(  # type: ignore[no-untyped-call]
                    health_pb2.HealthCheckRequest(service=""), timeout=30))
            return kv.get("n")

        # close() comes while the call waits, 1 s after it began (were it sooner, the call would be one
        # made after close(), which ends the same way)
        error = _ended_by(client, "close", call, lambda: bool(began) and time.monotonic() - began[0] >= 1.0)
        _closed_waiting(error)
        with pytest.raises(ClientClosed) as after:  # a call made after close(): the same
            kv.get("n")
        _closed_waiting(after.value)
        with pytest.raises(ClientStateError, match=r"remote plugin 'counter' was closed \(close\(\) or kill\(\)\);"
                           " make a new RemoteClient to connect again"):  # once: "was killed; make a new Client"
            client.dispense(PLUGIN_NAME)
    finally:
        rep.proc.kill()  # first, whatever close() does: a stopped (SIGSTOP) replica is never left so
        client.close()
        rep.stop()
        shutil.rmtree(rep.tmp, ignore_errors=True)


@pytest.mark.parametrize("brokered", [True, False])
def test_async_close_during_a_call_waiting_for_an_endpoint_ends_it_client_closed_unsent(
        tmp_path: Path, brokered: bool) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    rep = CounterReplica(tmp_path / "r", certs)

    async def main() -> tuple[object, object]:
        client = AsyncRemoteClient(counter_config([rep], host_tls(certs), brokered=brokered, call_timeout=30))
        try:
            await client.start()
            assert client.multiplexed is brokered
            kv = await client.dispense(PLUGIN_NAME)
            first = (await asyncio.gather(kv.get("n"), return_exceptions=True))[0]
            assert isinstance(first, grpc.RpcError) and first.code() == grpc.StatusCode.NOT_FOUND, first
            _lose(rep, brokered)
            for _ in range(300):
                if _no_endpoint_left(client.remote_client):
                    break
                await asyncio.sleep(0.1)
            assert _no_endpoint_left(client.remote_client)
            call = asyncio.ensure_future(kv.get("n"))
            await asyncio.sleep(1.0)  # the call waits for an endpoint meanwhile
            assert not call.done(), call
            await client.close()
            error = (await asyncio.gather(call, return_exceptions=True))[0]
            after = (await asyncio.gather(kv.get("n"), return_exceptions=True))[0]
            refused = (await asyncio.gather(client.dispense(PLUGIN_NAME), return_exceptions=True))[0]
            # once: "was killed; make a new AsyncClient" (brokered=False), "... was killed; make a new
            # AsyncRemoteClient" (multiplexed)
            assert isinstance(refused, ClientStateError) and "remote plugin 'counter' was closed (close() or" \
                " kill()); make a new AsyncRemoteClient to connect again" in str(refused), refused
            return error, after
        finally:
            await client.kill()

    loop = asyncio.new_event_loop()
    try:
        error, after = loop.run_until_complete(asyncio.wait_for(main(), 120))  # hang detection only
    finally:
        rep.proc.kill()  # first, whatever loop.close() does: a stopped (SIGSTOP) replica is never left so
        loop.close()
        rep.stop()
        shutil.rmtree(rep.tmp, ignore_errors=True)
    _closed_waiting(error, "AsyncRemoteClient")
    _closed_waiting(after, "AsyncRemoteClient")
