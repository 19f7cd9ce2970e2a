"""A --multiplex gateway's plain gRPC connections reach it through its front, which tells the gateway each
one's peer address: one address's health Watches (plugbay's own services) and forwarded calls are capped
per address there too, so another host is still answered. Before, the front hid the address and one peer
could take every Watch slot (and, with --max-peer-calls not applied, every forwarded call)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugbay._proto.grpc.health.v1 import health_pb2
from plugbay.core.plugin.gate import NETWORK_WATCHES
from plugbay.network.gateway import Gateway, GatewayConfig
from tests import netcerts
from tests.h2peer import StallingPeer, watches_of_many_hosts
from tests.test_network_serve import secure

KV_PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "kv" / "plugin.py"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
BOUND = 10.0


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[Gateway, netcerts.CertSet]]:
    certs = netcerts.write_set(tmp_path / "tls")
    with Gateway(GatewayConfig(
            cmd=[sys.executable, str(KV_PLUGIN)], cookie=("BASIC_PLUGIN", "hello"), listen="127.0.0.1:0",
            cert_file=str(certs.cert_file), key_file=str(certs.key_file), client_ca_file=str(certs.client_ca_file),
            multiplex=True, start_timeout=20, cwd=str(tmp_path))) as gw:
        yield gw, certs


def test_one_peer_address_holding_health_watches_leaves_another_peer_its_watch(
        gateway: tuple[Gateway, netcerts.CertSet]) -> None:
    gw, certs = gateway
    greedy = StallingPeer(gw.address, certs, "127.0.0.2")
    try:
        greedy.open_calls(HEALTH_WATCH, health_pb2.HealthCheckRequest(service="plugin").SerializeToString(),
                          NETWORK_WATCHES)  # each answered, or refused past that address's share
        watches_of_many_hosts([secure(certs, gw.address)], "plugin", BOUND)
    finally:
        greedy.close()
