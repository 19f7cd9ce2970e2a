"""A stub pinned to one replica (a brokered dispense(), or pool.pinned(key)) whose replica is gone: killed, so
its multiplexed session ended, or dropped by discovery. Its calls waited the whole call_timeout and then
failed NoEndpointsError; they now fail at once with PinnedEndpointGoneError (a NoEndpointsError), naming the
replica and saying to dispense() again. A stub on a replica that is only slow keeps its deadline. Real
counter, streaming and net_kv plugins on 127.0.0.1 (mTLS for the multiplexed ones)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugbay import AsyncRemoteClient, CircuitBreaker, RemoteClient, RemoteConfig
from plugbay.core.resilience.calls import install
from plugbay.core.resilience.circuit import CLOSED
from plugbay.errors import CallTimeoutError, NoEndpointsError, PinnedEndpointGoneError
from plugbay.network.pool import EndpointPool
from plugbay.network.resolver import Endpoint
from tests import netcerts
from tests.net_util import Replica, aio_connection_lost, connection_lost
from tests.test_network_broker import (PLUGIN_NAME, REPO, Adder, CounterReplica, counter_config, host_tls,
                                       killable_pair, remote)
# the failover tests' fixtures: a CA's set in tmp_path, and two counter replicas a test may kill
from tests.test_network_broker_failover import _both_healthy, certs, replicas, went_away  # noqa: F401
from tests.test_network_tls_renewal import _Steered

sys.path.insert(0, str(REPO / "examples" / "kv"))
sys.path.insert(0, str(REPO / "examples" / "streaming"))
import counter_plugin_def  # noqa: E402
from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402
from streaming_plugin_def import HANDSHAKE as STREAM_HANDSHAKE  # noqa: E402
from streaming_plugin_def import PLUGIN_NAME as STREAMER, StreamerPlugin  # noqa: E402

# long: on the old code each call below waited this out and then failed NoEndpointsError, not the type asked
CALL_TIMEOUT = 20.0


@pytest.fixture
def streamers(tmp_path: Path, certs: netcerts.CertSet) -> Iterator[list[CounterReplica]]:
    yield from killable_pair(tmp_path, certs, REPO / "examples" / "streaming" / "plugin.py")


def _one_on_each(client: Any, lost: CounterReplica) -> tuple[tuple[Any, str], tuple[Any, str]]:
    """A stub pinned to ``lost`` and one pinned to the other replica, each with the key it put 1 under. Round
    robin alternates, but passes over a replica whose session is not up yet (a loaded machine)."""
    found: dict[bool, tuple[Any, str]] = {}
    for n in range(20):  # a hang guard only
        stub, key = client.dispense(PLUGIN_NAME), f"k{n}"
        stub.put(key, 1, Adder())
        found.setdefault((lost.folder / f"kv_{key}").exists(), (stub, key))
        if len(found) == 2:
            return found[True], found[False]
    raise AssertionError(f"dispense() never pinned a stub to each replica: {found}")


def _said_gone(err: BaseException, replica: CounterReplica | Replica) -> None:
    text = str(err)
    assert f"({'tcp:' + replica.address})" in text and "cannot be reached" in text and "dispense() again" in text, text
    assert isinstance(err, NoEndpointsError) and isinstance(err, grpc.RpcError), type(err).__mro__
    assert err.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_a_stub_pinned_to_a_replica_gone_fails_at_once_saying_so(replicas: list[CounterReplica],
                                                                 certs: netcerts.CertSet, how: str) -> None:
    lost, serving = replicas
    # health checks far apart: only the ended session tells the client that the replica is gone
    with remote(replicas, host_tls(certs), multiplex=True, call_timeout=CALL_TIMEOUT, health_interval=60) as client:
        _both_healthy(client)
        (on_lost, key), (on_serving, other) = _one_on_each(client, lost)
        went_away(client, lost, how)
        for call in (lambda: on_lost.get(key), lambda: on_lost.put(key, 1, Adder())):
            with pytest.raises(PinnedEndpointGoneError) as gone:
                call()
            _said_gone(gone.value, lost)
        assert on_serving.get(other) == 1  # the other replica's stub is untouched
        again = client.dispense(PLUGIN_NAME)  # what the error says to do
        again.put("again", 2, Adder())
        assert again.get("again") == 2
        assert serving.value("again") == '{"Value":2}'


def test_an_asyncio_stub_pinned_to_a_killed_replica_fails_at_once_saying_so(replicas: list[CounterReplica],
                                                                            certs: netcerts.CertSet) -> None:
    lost, serving = replicas
    cfg = counter_config(replicas, host_tls(certs), multiplex=True, call_timeout=CALL_TIMEOUT, health_interval=60)

    async def main() -> None:
        async with AsyncRemoteClient(cfg) as client:
            _both_healthy(client.remote_client)
            found: dict[bool, tuple[Any, str]] = {}  # as _one_on_each
            for n in range(20):  # a hang guard only
                stub, key = await client.dispense(PLUGIN_NAME), f"k{n}"
                await stub.put(key, 1, Adder())
                found.setdefault((lost.folder / f"kv_{key}").exists(), (stub, key))
                if len(found) == 2:
                    break
            (on_lost, key), (on_serving, other) = found[True], found[False]
            lost.proc.kill()
            lost.proc.wait()
            connection_lost(client.remote_client, f"tcp:{lost.address}")
            await aio_connection_lost(client, f"tcp:{lost.address}")
            with pytest.raises(PinnedEndpointGoneError) as gone:
                await on_lost.get(key)
            _said_gone(gone.value, lost)
            assert await on_serving.get(other) == 1

    asyncio.run(asyncio.wait_for(main(), 120))  # hang detection only


def test_a_stream_on_a_stub_pinned_to_a_killed_replica_fails_at_once(streamers: list[CounterReplica],
                                                                     certs: netcerts.CertSet) -> None:
    lost, live = streamers
    cfg = RemoteConfig(target=f"static:///{lost.address},{live.address}", handshake=STREAM_HANDSHAKE,
                       plugins={STREAMER: StreamerPlugin()}, tls=host_tls(certs), name="streamer", multiplex=True,
                       call_timeout=CALL_TIMEOUT, health_interval=60, start_timeout=20)
    with RemoteClient(cfg) as client:
        _both_healthy(client)
        found: dict[str, Any] = {}  # endpoint key -> a stub pinned there, told by the endpoint's picks
        for _ in range(20):  # a hang guard only
            stub = client.dispense(STREAMER)
            before = {k: e["picks"] for k, e in client.metrics()["endpoints"].items()}
            assert [c.seq for c in stub.generate(2, 8)] == [0, 1]
            grew = [k for k, e in client.metrics()["endpoints"].items() if e["picks"] > before.get(k, 0)]
            assert len(grew) == 1, grew
            found.setdefault(grew[0], stub)
            if len(found) == 2:
                break
        on_lost, on_live = found[f"tcp:{lost.address}"], found[f"tcp:{live.address}"]
        lost.proc.kill()
        lost.proc.wait()
        connection_lost(client, f"tcp:{lost.address}")
        with pytest.raises(PinnedEndpointGoneError) as gone:
            list(on_lost.generate(2, 8))
        _said_gone(gone.value, lost)
        assert [c.seq for c in on_live.generate(2, 8)] == [0, 1]  # the live replica's stub streams on


def test_an_asyncio_stream_on_a_stub_pinned_to_a_killed_replica_fails_at_once(streamers: list[CounterReplica],
                                                                             certs: netcerts.CertSet) -> None:
    """An AsyncRemoteClient's stream on a stub pinned to a killed replica: its picks were asked with no call
    start (each look took "now"), so no refusal ever counted and it waited its whole deadline."""
    lost, live = streamers
    cfg = RemoteConfig(target=f"static:///{lost.address},{live.address}", handshake=STREAM_HANDSHAKE,
                       plugins={STREAMER: StreamerPlugin()}, tls=host_tls(certs), name="streamer", multiplex=True,
                       call_timeout=CALL_TIMEOUT, health_interval=60, start_timeout=20)

    async def main() -> None:
        async with AsyncRemoteClient(cfg) as client:
            _both_healthy(client.remote_client)
            found: dict[bool, Any] = {}  # on the lost replica or not -> a stub pinned there
            for _ in range(20):  # a hang guard only
                stub = await client.dispense(STREAMER)
                before = client.remote_client.metrics()["endpoints"][f"tcp:{lost.address}"]["picks"]
                assert [c.seq async for c in stub.generate(2, 8)] == [0, 1]
                picks = client.remote_client.metrics()["endpoints"][f"tcp:{lost.address}"]["picks"]
                found.setdefault(picks > before, stub)
                if len(found) == 2:
                    break
            on_lost, on_live = found[True], found[False]
            lost.proc.kill()
            lost.proc.wait()
            connection_lost(client.remote_client, f"tcp:{lost.address}")
            await aio_connection_lost(client, f"tcp:{lost.address}")
            with pytest.raises(PinnedEndpointGoneError) as gone:
                [c async for c in on_lost.generate(2, 8)]
            _said_gone(gone.value, lost)
            assert [c.seq async for c in on_live.generate(2, 8)] == [0, 1]

    asyncio.run(asyncio.wait_for(main(), 120))  # hang detection only


def test_calls_after_a_refused_redial_each_fail_at_once(replicas: list[CounterReplica],
                                                        certs: netcerts.CertSet) -> None:
    """Calls on a stub pinned to a killed replica, each begun after a dial to its address was refused: a refusal
    from before a call was stale, so the call waited for gRPC's next redial (its reconnect backoff, seconds
    apart) and a short call_timeout ran out first (NoEndpointsError). The address is dialed again for the call."""
    lost, _ = replicas
    with remote(replicas, host_tls(certs), multiplex=True, call_timeout=3.0, health_interval=60) as client:
        _both_healthy(client)
        (on_lost, key), _ = _one_on_each(client, lost)
        went_away(client, lost, "kill")
        channel = client.pool.member(f"tcp:{lost.address}").channel
        for n in range(4):  # from the second on, each call begins after the last one's refused dial
            assert (channel.redial_refused_at is not None) is (n > 0)
            with pytest.raises(PinnedEndpointGoneError) as gone:
                on_lost.get(key)
            _said_gone(gone.value, lost)


def test_a_stub_pinned_to_an_endpoint_discovery_dropped_fails_at_once() -> None:
    first, second = Replica("127.0.0.1:0"), Replica("127.0.0.1:0")
    try:
        endpoints = [Endpoint("tcp", first.address), Endpoint("tcp", second.address)]
        resolver = _Steered(endpoints)
        with EndpointPool(resolver, insecure=True, health_interval=60) as pool:
            pool.start()
            dropped = kv_pb2_grpc.KVStub(pool.pinned(endpoints[0].key))
            kept = kv_pb2_grpc.KVStub(pool.pinned(endpoints[1].key))
            for stub in (dropped, kept):
                stub.Put(kv_pb2.PutRequest(key="k", value=b"v"), timeout=CALL_TIMEOUT)
            assert resolver.report is not None
            resolver.report([endpoints[1]])  # discovery no longer lists the first replica, which still runs
            with pytest.raises(PinnedEndpointGoneError) as gone:
                dropped.Get(kv_pb2.GetRequest(key="k"), timeout=CALL_TIMEOUT)
            _said_gone(gone.value, first)
            assert "discovery no longer lists it" in str(gone.value)
            assert kept.Get(kv_pb2.GetRequest(key="k"), timeout=CALL_TIMEOUT).value == b"v"
    finally:
        first.stop()
        second.stop()


def test_a_stub_pinned_to_a_stopped_but_connected_replica_keeps_its_deadline(replicas: list[CounterReplica],
                                                                            certs: netcerts.CertSet) -> None:
    slow, _ = replicas
    # the setup under the long call_timeout (a loaded machine's dispense and put may take a second); the short
    # deadline for the timed call only, through the stub's own gRPC stub on its pinned channel
    with remote(replicas, host_tls(certs), multiplex=True, call_timeout=CALL_TIMEOUT, health_interval=60) as client:
        _both_healthy(client)
        (on_slow, key), _ = _one_on_each(client, slow)
        slow.proc.send_signal(signal.SIGSTOP)  # its connection stays up: a replica that is only slow
        try:
            with pytest.raises(CallTimeoutError) as late:
                on_slow._stub.Get(counter_plugin_def.counter_pb2.GetRequest(key=key), timeout=1.0)
            assert not isinstance(late.value, PinnedEndpointGoneError)
        finally:
            slow.proc.send_signal(signal.SIGCONT)
        assert on_slow.get(key) == 1  # and it answers again once it runs



def test_calls_on_a_stub_pinned_to_a_gone_replica_do_not_open_the_circuit_breaker(
        replicas: list[CounterReplica], certs: netcerts.CertSet) -> None:
    """PinnedEndpointGoneError is UNAVAILABLE, which a breaker counts: a few calls on stale stubs opened it for
    every replica. It is no news of the replicas calls go to."""
    lost, _ = replicas
    breaker = CircuitBreaker(failure_threshold=2, window=60, open_for=60, name="counter")
    with remote(replicas, host_tls(certs), multiplex=True, call_timeout=CALL_TIMEOUT, health_interval=60) as client:
        _both_healthy(client)
        (on_lost, key), (on_serving, other) = _one_on_each(client, lost)
        install(client, breaker=breaker)
        lost.proc.kill()
        lost.proc.wait()
        connection_lost(client, f"tcp:{lost.address}")
        for _ in range(3):
            with pytest.raises(PinnedEndpointGoneError):
                on_lost.get(key)
        assert breaker.state == CLOSED
        assert on_serving.get(other) == 1  # not refused CircuitOpenError


def test_a_pin_pickles_and_copies_as_its_plain_key() -> None:
    """A Pin (a str: the key) held weak references, which pickle refused; copied, it kept them."""
    import copy
    import pickle

    from plugbay.network.pinkey import Pin

    class _Held:
        channel = None

    held = _Held()
    pin = Pin("tcp:127.0.0.1:1", held, held)
    for again in (pickle.loads(pickle.dumps(pin)), copy.copy(pin), copy.deepcopy(pin)):
        assert type(again) is str and again == "tcp:127.0.0.1:1"
