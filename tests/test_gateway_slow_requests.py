"""A gateway's peer opens gRPC streams to the gateway's own services and never sends their request:
other hosts' health checks and calls are still answered.

grpcio reads a unary request on a pool thread before any handler runs: one peer with a valid client
certificate holding one connection with more such streams than the gateway's spare threads took
every thread, and health, Discovery and every forwarded call froze until it closed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.core.plugin.gate import NETWORK_MAX_STREAMS, NETWORK_OWN_CALLS
from plugbay.network.gateway import Gateway, GatewayConfig
from tests import netcerts
from tests.h2peer import MAX_CONCURRENT_STREAMS, StallingPeer, stalling, watches_of_many_hosts
from tests.test_network_serve import secure

CHILD = Path(__file__).resolve().parent / "plugins" / "gateway_child.py"
HEALTH = "/grpc.health.v1.Health/Check"
DISCOVERY = "/plugbay.network.v1.Discovery/Describe"
BOUND = 10.0  # a hang ends here (the calls below answer in milliseconds)
STALLED = 80  # more than the 64 threads the gateway had for everything


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[Gateway, netcerts.CertSet]]:
    certs = netcerts.write_set(tmp_path / "tls")
    config = GatewayConfig(cmd=[sys.executable, str(CHILD)], cookie=("GWCHILD", "x"), listen="127.0.0.1:0",
                           cert_file=str(certs.cert_file), key_file=str(certs.key_file),
                           client_ca_file=str(certs.client_ca_file), child_mtls=False)
    with Gateway(config) as gw:
        yield gw, certs


def _answers(channel: grpc.Channel) -> tuple[int, bytes]:
    health = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[no-untyped-call]
        health_pb2.HealthCheckRequest(service=""), timeout=BOUND).status
    return health, channel.unary_unary("/gwchild.S/Fast")(b"", timeout=BOUND)


@pytest.mark.parametrize("path", [HEALTH, DISCOVERY])
def test_one_connection_of_stalled_requests_leaves_health_and_calls_answering(
        gateway: tuple[Gateway, netcerts.CertSet], path: str) -> None:
    gw, certs = gateway
    peer = StallingPeer(gw.address, certs, "127.0.0.2")  # another host than the channel's below
    try:
        peer.open_streams(path, STALLED)
        with secure(certs, gw.address) as channel:
            assert _answers(channel) == (health_pb2.HealthCheckResponse.SERVING, b"fast")
        assert not peer.closed  # a connection answering PINGs: nothing ended it
        assert peer.settings.get(MAX_CONCURRENT_STREAMS) == NETWORK_MAX_STREAMS
    finally:
        peer.close()


def test_stalled_requests_past_the_own_services_slots_are_refused_at_once(
        gateway: tuple[Gateway, netcerts.CertSet]) -> None:
    gw, certs = gateway
    conns = NETWORK_OWN_CALLS // NETWORK_MAX_STREAMS + 1
    # from two addresses: one address holds at most half of the slots
    sources = [f"127.0.0.{2 + i % 2}" for i in range(conns)]
    with stalling(gw.address, certs, HEALTH, conns, NETWORK_MAX_STREAMS, sources), \
            secure(certs, gw.address) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[no-untyped-call]
                health_pb2.HealthCheckRequest(service=""), timeout=BOUND)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "the gateway is already answering" in str(refused.value.details())
        assert channel.unary_unary("/gwchild.S/Fast")(b"", timeout=BOUND) == b"fast"  # forwarded: own slots
    with secure(certs, gw.address) as channel:
        assert _answers(channel) == (health_pb2.HealthCheckResponse.SERVING, b"fast")


def test_many_hosts_each_holding_a_health_watch_get_theirs(gateway: tuple[Gateway, netcerts.CertSet]) -> None:
    gw, certs = gateway
    watches_of_many_hosts([secure(certs, gw.address) for _ in range(8)], "", BOUND)  # a local plugin's cap: 4
