"""A call a saturated network plugin refuses at its handler gate goes to another replica.

serve() on the network refuses a call at once with RESOURCE_EXHAUSTED when its handler gate is full
(ServeConfig.max_workers handlers running, NETWORK_READS calls waiting for their request, or
NETWORK_OWN_CALLS of plugbay's own). The handler never ran, so the refusal echoes the pool's
NOT_SENT token as a trailer, and the pool tries the replicas it has not tried yet; once every one
refused, the caller gets the RESOURCE_EXHAUSTED at once (no wait until the deadline). The caller
used to get the RESOURCE_EXHAUSTED although another replica was idle.

Replicas: tests/plugins/held_kv.py (the KV example with max_workers=1, whose Get("hold") keeps the
slot until released), two processes over mTLS; the host's calls go through the pool unpinned
(brokered=False), blocking, future() and on grpc.aio.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugbay import AsyncRemoteClient, OutlierPolicy, RemoteClient, RemoteConfig
from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.core.plugin.gate import NETWORK_MAX_STREAMS, NETWORK_OWN_CALLS, NETWORK_READS
from plugbay.network.aiopool import AioEndpoints, AioPoolChannel
from plugbay.network.poolcalls import NOT_SENT
from tests import netcerts
from tests.h2peer import StallingPeer
from tests.replicas import replica_pair
from tests.net_util import first_check_passed
from tests.resilience_util import wait_until
from tests.test_network_broker import host_tls
from tests.test_network_serve import REPO, NetPlugin, kv_pb2, kv_pb2_grpc, secure, tls_env

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402 (examples/kv: test_network_serve)

HELD_KV = REPO / "tests" / "plugins" / "held_kv.py"
TIMEOUT = 30.0  # each call's: a refusal that waited for it would end DEADLINE_EXCEEDED or UNAVAILABLE
GET = "/proto.KV/Get"
OUTLIER = OutlierPolicy(consecutive_failures=2)  # fewer than the refusals a test sees
HOWS = ["call", "future", "aio"]


class Replica:
    """held_kv.py in its own folder; hold() keeps its one handler slot taken by a direct call."""

    def __init__(self, folder: Path, certs: netcerts.CertSet) -> None:
        folder.mkdir()
        self.folder = folder
        self.certs = certs
        self.plugin = NetPlugin(folder, tls_env(certs), [sys.executable, str(HELD_KV)])
        self.address = self.plugin.address
        self.pid = str(self.plugin.proc.pid).encode()
        self._holders: list[threading.Thread] = []

    def hold(self) -> None:
        def call() -> None:
            with secure(self.certs, self.address) as channel:
                kv_pb2_grpc.KVStub(channel).Get(kv_pb2.GetRequest(key="hold"), timeout=90)

        holder = threading.Thread(target=call, daemon=True)
        holder.start()
        self._holders.append(holder)
        assert wait_until(lambda: (self.folder / "held").exists(), 30), "the hold never reached the handler"

    def release(self) -> None:
        (self.folder / "release").touch()
        for holder in self._holders:
            holder.join(30)
        assert not any(h.is_alive() for h in self._holders)

    def ran(self) -> list[str]:
        """The keys of the plugin's own refusals its handler ran (held_kv.py)."""
        path = self.folder / "ran"
        return path.read_text().split() if path.exists() else []

    def stop(self) -> None:
        self.release()
        code, err = self.plugin.stop()
        assert code == 0, err[-2000:]


@pytest.fixture
def certs(tmp_path: Path) -> netcerts.CertSet:
    return netcerts.write_set(tmp_path / "tls")


@pytest.fixture
def replicas(tmp_path: Path, certs: netcerts.CertSet) -> Iterator[list[Replica]]:
    with replica_pair(lambda folder: Replica(folder, certs), tmp_path) as reps:
        yield reps


def _config(reps: list[Replica], certs: netcerts.CertSet) -> RemoteConfig:
    return RemoteConfig(target="static:///" + ",".join(r.address for r in reps), handshake=HANDSHAKE,
                        plugins={PLUGIN_NAME: KVPlugin()}, tls=host_tls(certs), brokered=False,
                        call_timeout=TIMEOUT, outlier=OUTLIER, name="held-kv", start_timeout=20)


@contextmanager
def _calls(reps: list[Replica], certs: netcerts.CertSet, how: str) -> Iterator[tuple[Callable[[str], bytes],
                                                                                  Callable[[], dict[str, Any]]]]:
    """(get(key) through the pool ``how``, the pool's metrics), once each replica passed its first health check
    (till then calls go to those that passed: the tests' rounds over both would meet one only)."""
    keys = [f"tcp:{r.address}" for r in reps]
    if how == "aio":
        loop = asyncio.new_event_loop()
        client = AsyncRemoteClient(_config(reps, certs))
        try:
            loop.run_until_complete(client.start())
            first_check_passed(client, *keys)
            stub = loop.run_until_complete(client.dispense(PLUGIN_NAME))
            yield (lambda key: loop.run_until_complete(asyncio.wait_for(stub.get(key), TIMEOUT * 2))), client.metrics
        finally:
            loop.run_until_complete(client.close())
            loop.close()
        return
    with RemoteClient(_config(reps, certs)) as sync:
        first_check_passed(sync, *keys)
        if how == "call":
            kv = sync.dispense(PLUGIN_NAME)
            yield kv.get, sync.metrics
            return
        method = sync.pool.unary_unary(GET, request_serializer=kv_pb2.GetRequest.SerializeToString,
                                       response_deserializer=kv_pb2.GetResponse.FromString)
        yield (lambda key: bytes(method.future(kv_pb2.GetRequest(key=key), timeout=TIMEOUT)
                                 .result(TIMEOUT * 2).value)), sync.metrics


def _refused(get: Callable[[str], bytes], key: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        get(key)
    return info.value


def _not_ejected(metrics: dict[str, Any]) -> None:
    assert metrics["ejections"] == 0, metrics
    for endpoint in metrics["endpoints"].values():
        assert endpoint["healthy"] and not endpoint["ejected"] and endpoint["failures"] == 0, endpoint


@pytest.mark.parametrize("how", HOWS)
def test_a_call_a_saturated_replica_refuses_is_answered_by_the_other(
        replicas: list[Replica], certs: netcerts.CertSet, how: str) -> None:
    a, b = replicas
    with _calls(replicas, certs, how) as (get, metrics):
        assert {get("who") for _ in range(4)} == {a.pid, b.pid}  # both serve while idle
        a.hold()
        # round robin sends every other call to a first (a resend picks too): each is refused there
        assert [get("who") for _ in range(6)] == [b.pid] * 6
        assert metrics()["resends"] >= 3, metrics()
        _not_ejected(metrics())  # refusing as busy is no failure: a is still in rotation
        a.release()
        assert {get("who") for _ in range(4)} == {a.pid, b.pid}


@pytest.mark.parametrize("how", HOWS)
def test_when_every_replica_is_saturated_the_call_is_refused_at_once(
        replicas: list[Replica], certs: netcerts.CertSet, how: str) -> None:
    a, b = replicas
    with _calls(replicas, certs, how) as (get, metrics):
        get("who")
        a.hold()
        b.hold()
        for _ in range(3):  # more than OUTLIER's consecutive failures
            before = metrics()
            error = _refused(get, "who")
            # RESOURCE_EXHAUSTED, not DEADLINE_EXCEEDED or UNAVAILABLE: it did not wait for the deadline
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            assert "ServeConfig.max_workers" in str(error.details())
            after = metrics()
            # tried on both replicas: refused by one, resent once to the other, which refused it too
            assert after["resends"] - before["resends"] == 1, (before, after)
            assert all(after["endpoints"][k]["picks"] - before["endpoints"][k]["picks"] == 1
                       for k in after["endpoints"]), (before, after)
        _not_ejected(metrics())
        b.release()
        assert get("who") == b.pid


@pytest.mark.parametrize("how", HOWS)
def test_a_resource_exhausted_without_the_pools_mark_is_not_sent_again(
        replicas: list[Replica], certs: netcerts.CertSet, how: str) -> None:
    # the plugin's own RESOURCE_EXHAUSTED (its handler ran), without the mark or with a made-up value
    with _calls(replicas, certs, how) as (get, _):
        for key in ("busy", "forged"):
            for _ in range(2):
                error = _refused(get, key)
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
                assert f"the plugin's own {key} refusal" in str(error.details())
    ran = [r.ran() for r in replicas]
    assert sorted(ran[0] + ran[1]) == ["busy", "busy", "forged", "forged"], ran  # each call ran once


def _marked_get(address: str, certs: netcerts.CertSet, token: str | None) -> grpc.RpcError:
    metadata = () if token is None else ((NOT_SENT, token),)
    with secure(certs, address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            kv_pb2_grpc.KVStub(channel).Get(kv_pb2.GetRequest(key="who"), timeout=TIMEOUT, metadata=metadata)
    return info.value


def _marks(error: grpc.RpcError) -> list[str]:
    return [v for k, v in error.trailing_metadata() or () if k == NOT_SENT]


def test_each_gate_refusal_echoes_the_callers_mark(replicas: list[Replica], certs: netcerts.CertSet) -> None:
    a, b = replicas
    token = "0123456789abcdef" * 2
    # the handler slot (ServeConfig.max_workers) is taken
    a.hold()
    refused = _marked_get(a.address, certs, token)
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and _marks(refused) == [token]
    assert _marks(_marked_get(a.address, certs, None)) == []  # nothing to echo: no trailer
    # the read budget (NETWORK_READS calls waiting for their request) and plugbay's own services' slots
    peers = [StallingPeer(b.address, certs) for _ in range(NETWORK_READS // NETWORK_MAX_STREAMS + 1)]
    peers += [StallingPeer(b.address, certs) for _ in range(NETWORK_OWN_CALLS // NETWORK_MAX_STREAMS + 1)]
    try:
        reads = NETWORK_READS // NETWORK_MAX_STREAMS + 1
        for i, peer in enumerate(peers):
            peer.open_streams(GET if i < reads else "/grpc.health.v1.Health/Check", NETWORK_MAX_STREAMS)
        refused = _marked_get(b.address, certs, token)
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused
        assert "waiting for their request message" in str(refused.details()) and _marks(refused) == [token]
        with secure(certs, b.address) as channel:
            with pytest.raises(grpc.RpcError) as info:
                health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[no-untyped-call]
                    health_pb2.HealthCheckRequest(service="plugin"), timeout=TIMEOUT, metadata=((NOT_SENT, token),))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
        assert "plugbay's own services" in str(info.value.details()) and _marks(info.value) == [token]
    finally:
        for peer in peers:
            peer.close()


def _busy(metadata: dict[str, str], context: grpc.ServicerContext) -> bytes:
    """A gate's refusal: RESOURCE_EXHAUSTED echoing the call's mark."""
    context.set_trailing_metadata(((NOT_SENT, metadata.get(NOT_SENT, "")),))
    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy")
    raise AssertionError("abort() returned")


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("busy_first", [True, False], ids=["busy-first", "unavailable-first"])
def test_busy_and_unavailable_refusals_end_with_the_busy_one_once_each_endpoint_refused(
        how: str, busy_first: bool) -> None:
    # in-process servers: one refuses as busy, one UNAVAILABLE with the mark (a gateway whose plugin is
    # down), tried in that order (pick_first). Going round again would meet the busy one again: the call
    # ends after one round with the busy refusal, not at its deadline with "every endpoint refused"
    from tests.test_network_not_sent import METHOD, _call, _marks, _pool

    answers = (_busy, _marks(None)) if busy_first else (_marks(None), _busy)
    with _pool(*answers) as (pool, seen):
        if how == "aio":
            async def main() -> tuple[grpc.StatusCode, str]:
                channel = AioPoolChannel(AioEndpoints(pool))
                try:
                    call = channel.unary_unary(METHOD)(b"", timeout=3)
                    with pytest.raises(grpc.RpcError) as info:
                        await call
                    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    return await call.code(), await call.details()  # the call's, not the last try's
                finally:
                    await channel.close()
            assert asyncio.run(main()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "busy")
        else:
            with pytest.raises(grpc.RpcError) as info:
                _call(pool, how)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
        assert [name for name, _ in seen] == ["s0", "s1"]
        assert pool.resends == 1


@pytest.mark.parametrize("peer_calls", [2, 1], ids=["max-calls", "max-peer-calls"])
def test_the_gateways_gate_refusals_echo_the_mark(peer_calls: int) -> None:
    # the gateway forwards calls through the same gate: its refusals never reached the child either
    from plugbay.network.gateway import Gateway
    from tests.test_gateway_limits import _fill, config

    token = "fedcba9876543210" * 2
    with Gateway(config(max_calls=2, max_peer_calls=peer_calls)) as gw, grpc.insecure_channel(gw.address) as ch:
        held = _fill(ch, peer_calls + 1, 1)  # once one was refused, the others hold every slot
        try:
            with pytest.raises(grpc.RpcError) as info:
                ch.unary_unary("/gwchild.S/Fast")(b"", timeout=TIMEOUT, metadata=((NOT_SENT, token),))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
            assert ("--max-peer-calls" if peer_calls == 1 else "--max-calls") in str(info.value.details())
            assert _marks(info.value) == [token]
        finally:
            for call in held:
                call.cancel()
