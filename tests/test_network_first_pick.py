"""A replica that accepts connections but never answers (a SIGSTOPped process) among healthy ones:
right after a pool or RemoteClient starts, the first calls and brokered pins go to endpoints that passed
a health check, not to one whose first check is still under way, so the stalled one costs no call its
timeout. Real net_kv replicas on loopback; no timing assertions."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.net_util import HANDSHAKE, PLUGIN_NAME, PLUGINS, Replica

from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402, I001

from plugbay import RemoteClient, RemoteConfig
from plugbay.network.pool import EndpointPool
from plugbay.network.targets import make_resolver, parse_target


@pytest.fixture()
def stalled_and_healthy() -> Iterator[tuple[Replica, Replica]]:
    stalled, healthy = Replica("127.0.0.1:0"), Replica("127.0.0.1:0")
    os.kill(stalled.proc.pid, signal.SIGSTOP)  # the kernel still accepts its connections; nothing answers
    try:
        yield stalled, healthy
    finally:
        os.kill(stalled.proc.pid, signal.SIGCONT)
        stalled.stop()
        healthy.stop()


def test_the_first_call_of_a_fresh_pool_skips_a_stalled_replica(stalled_and_healthy: tuple[Replica, Replica]) -> None:
    stalled, healthy = stalled_and_healthy
    target = parse_target(f"static:///{stalled.address},{healthy.address}")  # the stalled one first
    with EndpointPool(make_resolver(target, name="first"), insecure=True, health_interval=5.0,
                      health_timeout=1.0, name="first") as pool:
        pool.start()
        got = kv_pb2_grpc.KVStub(pool).Get(kv_pb2.GetRequest(key="__pid__"), timeout=10)
        assert got.value == str(healthy.proc.pid).encode()
        assert pool.metrics()["endpoints"][f"tcp:{stalled.address}"]["picks"] == 0


@pytest.mark.parametrize("policy", ["pick_first", "round_robin"])
def test_a_call_shorter_than_the_health_timeout_goes_to_the_replica_that_passed(
        stalled_and_healthy: tuple[Replica, Replica], policy: str) -> None:
    # the stalled replica's first check takes health_timeout (3 s) to fail: calls waited for it (the whole
    # start's round), and one with a shorter deadline failed though the healthy replica had answered
    stalled, healthy = stalled_and_healthy
    target = parse_target(f"static:///{healthy.address},{stalled.address}")
    with EndpointPool(make_resolver(target, name="short"), insecure=True, health_interval=5.0,
                      health_timeout=3.0, policy=policy, name="short") as pool:
        pool.start()
        stub = kv_pb2_grpc.KVStub(pool)
        for _ in range(3):
            assert stub.Get(kv_pb2.GetRequest(key="__pid__"), timeout=1.0).value == str(healthy.proc.pid).encode()
        assert pool.metrics()["endpoints"][f"tcp:{stalled.address}"]["picks"] == 0


def test_a_remote_client_starts_and_calls_without_touching_a_stalled_replica(
        stalled_and_healthy: tuple[Replica, Replica]) -> None:
    stalled, healthy = stalled_and_healthy
    config = RemoteConfig(target=f"static:///{stalled.address},{healthy.address}", handshake=HANDSHAKE,
                          plugins=PLUGINS, insecure=True, health_interval=5.0, health_timeout=1.0,
                          call_timeout=10.0, name="kv-first")
    with RemoteClient(config) as client:
        kv = client.dispense(PLUGIN_NAME)
        assert kv.get("__pid__") == str(healthy.proc.pid).encode()
        assert client.metrics()["endpoints"][f"tcp:{stalled.address}"]["picks"] == 0


def test_multiplexed_dispense_pins_stubs_to_the_healthy_replica(tmp_path: Path) -> None:
    from tests import netcerts
    from tests.test_network_broker import PLUGIN_NAME as COUNTER, Adder, CounterReplica, counter_config, host_tls

    certs = netcerts.write_set(tmp_path / "tls")
    stalled, healthy = CounterReplica(tmp_path / "a", certs), CounterReplica(tmp_path / "b", certs)
    os.kill(stalled.proc.pid, signal.SIGSTOP)
    try:
        config = counter_config([stalled, healthy], host_tls(certs), health_interval=5.0, health_timeout=1.0,
                                call_timeout=10.0)
        with RemoteClient(config) as client:
            assert client.multiplexed
            adder = Adder()
            for stub in (client.dispense(COUNTER), client.dispense(COUNTER)):  # round robin: both healthy
                stub.put("n", 1, adder)
            assert adder.calls == 2 and healthy.value("n") == '{"Value":2}'
            assert client.metrics()["endpoints"][f"tcp:{stalled.address}"]["picks"] == 0
    finally:
        os.kill(stalled.proc.pid, signal.SIGCONT)
        for replica in (stalled, healthy):
            replica.stop()
            shutil.rmtree(replica.tmp, ignore_errors=True)
