"""A network plugin's peer opens gRPC streams and never sends their request: other hosts are still served.

grpcio's sync server waits for a unary call's request on one of its pool's threads before any
handler (or plugbay's gate) runs. One peer with a valid client certificate holding one HTTP/2
connection open with ~60 such streams (answering PINGs, so nothing looked wrong) took every thread:
health checks and every host's calls timed out until it closed. The unmodified KV example, served
with PLUGBAY_NETWORK_* (the brokering front, and plain gRPC in grpcio's TLS: MULTIPLEX=0).
A second peer address is 127.0.0.2 (Linux routes all of 127/8 to lo).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.core.plugin.gate import MAX_WATCHES, NETWORK_MAX_STREAMS, NETWORK_OWN_CALLS, NETWORK_READS, NETWORK_WATCHES
from plugbay.core.plugin.peershare import share_of
from tests import netcerts
from tests.h2peer import MAX_CONCURRENT_STREAMS, StallingPeer, stalling, watches_of_many_hosts
from tests.test_network_serve import NetPlugin, kv_pb2, kv_pb2_grpc, secure, tls_env

HEALTH = "/grpc.health.v1.Health/Check"
KV_GET = "/proto.KV/Get"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
BOUND = 10.0  # a hang ends here (the calls below answer in milliseconds)


@pytest.fixture
def certs(tmp_path: Path) -> netcerts.CertSet:
    return netcerts.write_set(tmp_path / "tls")


@pytest.fixture(params=["front", "multiplex-0"])
def plugin(request: pytest.FixtureRequest, tmp_path: Path, certs: netcerts.CertSet) -> Iterator[NetPlugin]:
    env = tls_env(certs)
    if request.param == "multiplex-0":
        env["PLUGBAY_NETWORK_MULTIPLEX"] = "0"
    p = NetPlugin(tmp_path, env)
    yield p
    code, err = p.stop()
    assert code == 0, err[-2000:]


def _health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
    return stub.Check(health_pb2.HealthCheckRequest(service="plugin"), timeout=BOUND).status  # type: ignore[no-any-return]


def _kv_get(channel: grpc.Channel) -> grpc.StatusCode:
    """The code of a Get of a key never put: NOT_FOUND is the plugin's own answer."""
    with pytest.raises(grpc.RpcError) as info:
        kv_pb2_grpc.KVStub(channel).Get(kv_pb2.GetRequest(key="never-put"), timeout=BOUND)
    return info.value.code()  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", [HEALTH, KV_GET])
def test_one_connection_of_stalled_requests_leaves_health_and_calls_answering(
        plugin: NetPlugin, certs: netcerts.CertSet, path: str) -> None:
    peer = StallingPeer(plugin.address, certs, "127.0.0.2")  # another host than the channel's below
    try:
        peer.open_streams(path, 60)
        with secure(certs, plugin.address) as channel:
            assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
            assert _kv_get(channel) == grpc.StatusCode.NOT_FOUND
        assert not peer.closed  # a connection answering PINGs: nothing ended it
        # the server lets one connection hold a bounded number of streams (the rest were reset)
        assert peer.settings.get(MAX_CONCURRENT_STREAMS) == NETWORK_MAX_STREAMS
    finally:
        peer.close()


@pytest.mark.parametrize("path", [HEALTH, KV_GET])
def test_one_peer_address_with_many_connections_of_stalled_requests_leaves_another_peer_answered(
        plugin: NetPlugin, certs: netcerts.CertSet, path: str) -> None:
    # three connections of stalled calls from one address took a whole budget (the reads' or plugbay's own
    # calls'): every other host's calls were refused RESOURCE_EXHAUSTED until that peer let go
    conns = max(NETWORK_READS, NETWORK_OWN_CALLS) // NETWORK_MAX_STREAMS + 1
    with stalling(plugin.address, certs, path, conns, NETWORK_MAX_STREAMS, ["127.0.0.2"] * conns), \
            secure(certs, plugin.address) as channel:
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        assert _kv_get(channel) == grpc.StatusCode.NOT_FOUND


def test_one_peer_address_holding_health_watches_leaves_another_peer_its_watch(
        plugin: NetPlugin, certs: netcerts.CertSet) -> None:
    # one peer's Watches took all NETWORK_WATCHES: another host's Watch was refused
    peer = StallingPeer(plugin.address, certs, "127.0.0.2")
    try:
        peer.open_calls(HEALTH_WATCH, health_pb2.HealthCheckRequest(service="plugin").SerializeToString(),
                        NETWORK_WATCHES)  # each answered: its first SERVING, or refused past the peer's share
        watches_of_many_hosts([secure(certs, plugin.address)], "plugin", BOUND)
    finally:
        peer.close()


def test_stalled_requests_past_the_caps_are_refused_at_once(plugin: NetPlugin, certs: netcerts.CertSet) -> None:
    # stalled calls from two peer addresses (each holding its share) fill a cap: what is past it is
    # refused, nothing waits
    conns = NETWORK_OWN_CALLS // NETWORK_MAX_STREAMS + 1
    assert 2 * share_of(NETWORK_OWN_CALLS) >= NETWORK_OWN_CALLS
    with stalling(plugin.address, certs, HEALTH, conns, NETWORK_MAX_STREAMS, ["127.0.0.2", "127.0.0.3"]), \
            secure(certs, plugin.address) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            _health(channel)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "plugbay's own services" in str(refused.value.details())
        assert _kv_get(channel) == grpc.StatusCode.NOT_FOUND  # the plugin's services have their own slots
    with secure(certs, plugin.address) as channel:  # the peer gone, its calls ended
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING


def test_stalled_plugin_calls_past_the_read_budget_are_refused_at_once(
        plugin: NetPlugin, certs: netcerts.CertSet) -> None:
    # a call to the plugin's services waits for its request holding a read token, not a handler slot
    conns = NETWORK_READS // NETWORK_MAX_STREAMS + 1
    assert 2 * share_of(NETWORK_READS) >= NETWORK_READS
    with stalling(plugin.address, certs, KV_GET, conns, NETWORK_MAX_STREAMS, ["127.0.0.2", "127.0.0.3"]), \
            secure(certs, plugin.address) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            kv_pb2_grpc.KVStub(channel).Get(kv_pb2.GetRequest(key="never-put"), timeout=BOUND)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "waiting for their request message" in str(refused.value.details())
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING  # own services: their own slots
    with secure(certs, plugin.address) as channel:
        assert _kv_get(channel) == grpc.StatusCode.NOT_FOUND


CALLERS = 24  # more than a cap of 16 streams per connection once let through, fewer than max_workers
ROUNDS = 20


def test_many_callers_on_one_connection_all_get_their_answers(plugin: NetPlugin, certs: netcerts.CertSet) -> None:
    # grpcio's clients do not reliably queue calls near the server's per-connection stream limit: with
    # 16, fifteen callers on one connection saw calls fail UNAVAILABLE (RST_STREAM REFUSED_STREAM)
    errors: list[grpc.StatusCode] = []
    with secure(certs, plugin.address) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        kv.Put(kv_pb2.PutRequest(key="k", value=b"v"), timeout=BOUND)

        def caller() -> None:
            for _ in range(ROUNDS):
                try:
                    kv.Get(kv_pb2.GetRequest(key="k"), timeout=BOUND)
                except grpc.RpcError as exc:
                    errors.append(exc.code())

        threads = [threading.Thread(target=caller, name=f"plugbay-test-caller-{i}") for i in range(CALLERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(BOUND * ROUNDS)
    assert errors == []


def test_many_asyncio_tasks_on_one_connection_all_get_their_answers(
        plugin: NetPlugin, certs: netcerts.CertSet) -> None:
    import asyncio

    import grpc.aio

    async def main() -> list[grpc.StatusCode]:
        errors: list[grpc.StatusCode] = []
        async with grpc.aio.secure_channel(plugin.address, netcerts.channel_credentials(certs), options=[
                ("grpc.ssl_target_name_override", "localhost")]) as channel:
            kv = kv_pb2_grpc.KVStub(channel)
            await kv.Put(kv_pb2.PutRequest(key="k", value=b"v"), timeout=BOUND)

            async def task() -> None:
                for _ in range(ROUNDS):
                    try:
                        await kv.Get(kv_pb2.GetRequest(key="k"), timeout=BOUND)
                    except grpc.aio.AioRpcError as exc:
                        errors.append(exc.code())

            await asyncio.wait_for(asyncio.gather(*(task() for _ in range(CALLERS))), BOUND * ROUNDS)
        return errors

    assert asyncio.run(main()) == []


def test_unary_calls_keep_their_answers(plugin: NetPlugin, certs: netcerts.CertSet) -> None:
    # the unary handlers run behind stream-request ones on the network: what a caller sees is unchanged
    with secure(certs, plugin.address) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        kv.Put(kv_pb2.PutRequest(key="k", value=b"v"), timeout=BOUND)
        assert kv.Get(kv_pb2.GetRequest(key="k"), timeout=BOUND).value == b"v"
        no_request = channel.stream_unary(KV_GET)
        with pytest.raises(grpc.RpcError) as none:  # half-closed without a message, as grpcio answers it
            no_request(iter(()), timeout=BOUND)
        assert none.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "requires exactly one request message" in str(none.value.details())
        garbage = channel.unary_unary(KV_GET)
        with pytest.raises(grpc.RpcError) as bad:
            garbage(b"\xff\xff\xff", timeout=BOUND)
        assert bad.value.code() == grpc.StatusCode.INTERNAL
        watch = health_pb2_grpc.HealthStub(channel).Watch(  # type: ignore[no-untyped-call]
            health_pb2.HealthCheckRequest(service="plugin"), timeout=BOUND)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


def test_a_rapid_reset_flood_does_not_cancel_other_hosts_calls(plugin: NetPlugin, certs: netcerts.CertSet) -> None:
    # streams opened and reset at once by the hundred thousand: they piled up in grpcio's queue of calls
    # not yet taken, past its limit, where other hosts' new calls were dropped at random (CANCELLED)
    peer = StallingPeer(plugin.address, certs)
    done = threading.Event()
    flood = threading.Thread(target=peer.reset_flood, args=(KV_GET, done), name="plugbay-test-rapid-reset")
    try:
        with secure(certs, plugin.address) as channel:
            _health(channel)  # connected before the flood
            flood.start()
            answers = [(_health(channel), _kv_get(channel)) for _ in range(20)]
        assert answers == [(health_pb2.HealthCheckResponse.SERVING, grpc.StatusCode.NOT_FOUND)] * 20
    finally:
        done.set()
        if flood.ident is not None:
            flood.join(30)
        peer.close()


def test_many_hosts_each_holding_a_health_watch_get_theirs(plugin: NetPlugin, certs: netcerts.CertSet) -> None:
    # a shared server's hosts may each hold a Watch (gRPC's client-side health checking does): a local
    # plugin's cap of 4 refused the fifth host's with RESOURCE_EXHAUSTED
    hosts = MAX_WATCHES * 2
    assert hosts < NETWORK_WATCHES
    watches_of_many_hosts([secure(certs, plugin.address) for _ in range(hosts)], "plugin", BOUND)
