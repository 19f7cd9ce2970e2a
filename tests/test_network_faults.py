"""Resilience across a real network: the plugin runs in a private network namespace behind a veth pair.

The host dials 10.231.x.y (an address this test assigns to its own namespace,
nothing else). Faults: the host's veth goes down (a partition: packets vanish)
and iptables REJECT rules inside the namespace (connections reset). No timing
assertions: the tests count outcomes and events; every wait is bounded.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.resilience_util import FAULTY, PLUGIN_NAME, PY, NetNS, faulty_config, wait_until

from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402, I001

from plugbay import (  # noqa: E402
    CallTimeoutError,
    CircuitBreaker,
    CircuitOpenError,
    Client,
    ClientConfig,
    HealthWatcher,
    MalformedHandshakeError,
    RestartPolicy,
    RetryPolicy,
    Supervisor,
)
from plugbay.core.resilience.circuit import CLOSED, HALF_OPEN, OPEN  # noqa: E402
from plugbay.core.resilience.healthwatch import NOT_SERVING, SERVING, UNREACHABLE  # noqa: E402
from plugbay.core.resilience.calls import install  # noqa: E402
from plugbay.core.resilience.supervisor import RUNNING  # noqa: E402

PORT = 4000
# Reconnect soon after a fault heals (gRPC's default first backoff is 1 s, growing to 120 s).
FAST_RECONNECT = (("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000),
                  ("grpc.min_reconnect_backoff_ms", 200))


@pytest.fixture()
def ns() -> Iterator[NetNS]:
    space = NetNS()
    try:
        yield space
    finally:
        space.delete()


def net_config(ns: NetNS, cwd: Path, **kw: object) -> ClientConfig:
    """The fault-switch KV plugin inside ``ns``, listening on its veth address."""
    kw.setdefault("call_timeout", 5.0)
    kw.setdefault("trusted_networks", (f"{ns.plugin_ip}/32",))  # not this machine's: dialed only when trusted
    return faulty_config(cwd, cmd=ns.command(PY, FAULTY), name="kv-netns", grpc_options=FAST_RECONNECT,
                         env={"PLUGBAY_LISTEN": f"tcp:{ns.plugin_ip}:{PORT}"}, **kw)


def heal_later(ns: NetNS, delay: float) -> threading.Timer:
    timer = threading.Timer(delay, ns.heal)
    timer.name = "plugbay-test-heal"
    timer.start()
    return timer


def test_the_plugin_is_dialed_across_the_veth(ns: NetNS, tmp_path: Path) -> None:
    with Client(net_config(ns, tmp_path)) as client:
        assert client.handshake.network == "tcp"
        assert client.handshake.address == f"{ns.plugin_ip}:{PORT}"
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        assert kv.get("k") == b"v"


def test_the_veth_address_is_refused_unless_trusted(ns: NetNS, tmp_path: Path) -> None:
    # the plugin's namespace is another machine to the host: its address proves nothing
    client = Client(net_config(ns, tmp_path, trusted_networks=()))
    try:
        with pytest.raises(MalformedHandshakeError, match="not this machine's.*trusted_networks"):
            client.start()
    finally:
        client.kill()


def test_partition_mid_call_fires_the_deadline_and_retries_succeed_after_the_link_returns(
        ns: NetNS, tmp_path: Path) -> None:
    with Client(net_config(ns, tmp_path)) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        stub = kv_pb2_grpc.KVStub(client.channel)
        cut = threading.Timer(0.3, ns.partition)  # while the plugin works on __sleep__
        cut.name = "plugbay-test-cut"
        cut.start()
        with pytest.raises(CallTimeoutError) as err:
            stub.Get(kv_pb2.GetRequest(key="__sleep__"), timeout=3.0)
        cut.join(5)
        assert "exceeded its deadline" in str(err.value)
        # Still partitioned: a retried call keeps trying until the link comes back.
        retries: list[str] = []
        install(client, retry=RetryPolicy(max_attempts=40, per_attempt_timeout=1.0, overall_timeout=30,
                                          initial_backoff=0.1, max_backoff=0.5, methods=["Get"],
                                          on_retry=lambda m, n, e, s: retries.append(type(e).__name__)))
        timer = heal_later(ns, 2.0)
        try:
            assert kv.get("k") == b"v"
        finally:
            timer.join(5)
        assert retries and set(retries) <= {"CallTimeout", "Unavailable"}


def test_a_multiplexed_connection_silent_in_a_partition_is_dropped_by_keepalive_and_dialed_again(
        ns: NetNS, tmp_path: Path) -> None:
    # the partition drops packets without a word: without the keepalive the session would look
    # open until TCP gave up (minutes), and calls would keep going into it
    with Client(net_config(ns, tmp_path, multiplex_broker=True, mux_keepalive=(0.5, 0.5))) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        mux = client._mux
        assert mux is not None
        first = mux._session
        assert first is not None and not first.closed
        ns.partition()
        try:
            assert wait_until(lambda: first.closed, 15), "the keepalive never dropped the silent connection"
            assert "keepalive" in first.close_reason, first.close_reason
        finally:
            ns.heal()
        install(client, retry=RetryPolicy(max_attempts=40, per_attempt_timeout=1.0, overall_timeout=30,
                                          initial_backoff=0.1, max_backoff=0.5, methods=["Get"]))
        assert kv.get("k") == b"v"  # over a new connection: the plugin took it (as go-plugin's would)
        assert mux._session is not first and mux._session is not None and not mux._session.closed


def test_reset_connections_fail_and_retries_succeed_once_accepted(ns: NetNS, tmp_path: Path) -> None:
    if not ns.iptables_works():
        pytest.skip("iptables does not work inside the test's network namespace")
    with Client(net_config(ns, tmp_path)) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        ns.reject(PORT)
        stub = kv_pb2_grpc.KVStub(client.channel)
        with pytest.raises(Exception) as err:
            stub.Get(kv_pb2.GetRequest(key="k"), timeout=3.0)
        assert err.value.code().name in ("UNAVAILABLE", "DEADLINE_EXCEEDED")  # type: ignore[attr-defined]
        retried: list[int] = []
        install(client, retry=RetryPolicy(max_attempts=100, per_attempt_timeout=1.0, overall_timeout=30,
                                          initial_backoff=0.1, max_backoff=0.3, methods=["Get"],
                                          on_retry=lambda m, n, e, s: retried.append(n)))
        timer = threading.Timer(1.5, ns.accept)
        timer.name = "plugbay-test-accept"
        timer.start()
        try:
            assert kv.get("k") == b"v"
        finally:
            timer.join(5)
        assert retried  # it failed at least once before the rule was removed


def test_circuit_opens_in_a_partition_and_a_probe_closes_it(ns: NetNS, tmp_path: Path) -> None:
    changes: list[tuple[str, str]] = []
    breaker = CircuitBreaker(failure_threshold=3, window=60, open_for=1.0, name="kv-netns",
                             on_change=lambda old, new, why: changes.append((old, new)))
    with Client(net_config(ns, tmp_path)) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        install(client, breaker=breaker)
        stub = kv_pb2_grpc.KVStub(client.channel)
        ns.partition()
        for _ in range(3):
            with pytest.raises(CallTimeoutError):
                stub.Get(kv_pb2.GetRequest(key="k"), timeout=0.5)
        assert breaker.state == OPEN
        with pytest.raises(CircuitOpenError) as err:
            kv.get("k")
        assert "Check that the plugin is running and reachable" in str(err.value)
        ns.heal()
        assert wait_until(lambda: breaker.state == HALF_OPEN, 10)
        assert stub.Get(kv_pb2.GetRequest(key="k"), timeout=20).value == b"v"  # the probe
        assert breaker.state == CLOSED
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


def test_health_watcher_reports_unreachable_then_serving(ns: NetNS, tmp_path: Path) -> None:
    with Client(net_config(ns, tmp_path)) as client:
        kv = client.dispense(PLUGIN_NAME)
        with HealthWatcher(client.channel, interval=0.5, timeout=1.5, name="kv-netns") as watcher:
            assert watcher.wait_for(SERVING, 10)
            kv.put("__health__", b"NOT_SERVING")
            assert watcher.wait_for(NOT_SERVING, 10)
            kv.put("__health__", b"SERVING")
            assert watcher.wait_for(SERVING, 10)
            ns.partition()
            assert watcher.wait_for(UNREACHABLE, 20), list(watcher.history)
            ns.heal()
            assert watcher.wait_for(SERVING, 30), list(watcher.history)
        states = [h[2] for h in watcher.history]
        assert states == [SERVING, NOT_SERVING, SERVING, UNREACHABLE, SERVING]


def test_supervisor_rides_out_a_short_partition(ns: NetNS, tmp_path: Path) -> None:
    with Supervisor(lambda: net_config(ns, tmp_path), health_interval=0.3, unhealthy_grace=60,
                    restart=RestartPolicy(max_restarts=2, initial_backoff=0.05)) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        pid = kv.get("__pid__")
        ns.partition()
        assert wait_until(lambda: sup.health == UNREACHABLE, 20)
        ns.heal()
        assert wait_until(lambda: "recovered" in [e.kind for e in sup.events], 30)
        assert kv.get("__pid__") == pid
        assert sup.restarts == 0


def test_supervisor_restarts_after_a_long_partition_and_the_stub_keeps_working(
        ns: NetNS, tmp_path: Path) -> None:
    with Supervisor(lambda: net_config(ns, tmp_path, start_timeout=20), health_interval=0.3,
                    unhealthy_grace=1.0, restart=RestartPolicy(max_restarts=3, initial_backoff=0.05)) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        pid = kv.get("__pid__")
        ns.partition()
        assert wait_until(lambda: "failure" in [e.kind for e in sup.events], 30)
        assert "health UNREACHABLE" in (sup.last_failure or "")
        ns.heal()
        assert wait_until(lambda: sup.state == RUNNING and sup.restarts >= 1, 60), list(sup.events)
        assert kv.get("__pid__") != pid
        kv.put("k", b"v")
        assert kv.get("k") == b"v"
