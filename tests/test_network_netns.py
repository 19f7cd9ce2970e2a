"""The endpoint pool across a real network: KV replicas in network namespaces this test creates.

Each replica runs inside its own namespace (tests.resilience_util.NetNS, a veth
pair on an address only that namespace has). Faults: kill -9, a partition
(the host's veth down: packets vanish) and latency (tc netem on the host's
veth). Calls go on through the other replicas, no call outlives its deadline
(+ slack), and a healed replica comes back. Loops are bounded in count; waits
are bounded in time.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.net_util import HANDSHAKE, PLUGIN_NAME, PLUGINS, Replica, connection_lost, first_check_passed
from tests.resilience_util import NetNS, wait_until

from plugbay import CallTimeoutError, NoEndpointsError, OutlierPolicy, RemoteClient, RemoteConfig

PORT = 4100
SLACK = 1.5  # a deadline is checked, not a speed: room for a loaded 2-core CI machine
FAST_RECONNECT = (("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 300),
                  ("grpc.min_reconnect_backoff_ms", 100))
pytestmark = pytest.mark.netns


class Site:
    """A namespace with one replica in it."""

    def __init__(self) -> None:
        self.ns = NetNS()
        try:
            self.replica = Replica(f"{self.ns.plugin_ip}:{PORT}", prefix=self.ns.command())
        except BaseException:
            self.ns.delete()
            raise
        self.key = f"tcp:{self.ns.plugin_ip}:{PORT}"
        self.pid = str(self.replica.proc.pid).encode()

    def delay(self, ms: int) -> None:
        res = subprocess.run(["tc", "qdisc", "add", "dev", self.ns.host_if, "root", "netem", "delay", f"{ms}ms"],
                             capture_output=True, text=True, timeout=10)
        if res.returncode != 0:
            pytest.skip(f"tc netem is not available in this kernel ({res.stderr.strip()}); the slow-replica"
                        " case of tests/test_network_pool.py covers latency with a plugin that stalls")

    def undelay(self) -> None:
        subprocess.run(["tc", "qdisc", "del", "dev", self.ns.host_if, "root"], capture_output=True, timeout=10)

    def close(self) -> None:
        self.replica.stop()
        self.undelay()
        self.ns.delete()


@pytest.fixture()
def sites() -> Iterator[list[Site]]:
    made: list[Site] = []
    try:
        for _ in range(3):
            made.append(Site())
        yield made
    finally:
        for site in made:
            site.close()


def client_for(sites: list[Site], **kw: Any) -> RemoteClient:
    target = "static:///" + ",".join(f"{s.ns.plugin_ip}:{PORT}" for s in sites)
    return RemoteClient(RemoteConfig(target=target, handshake=HANDSHAKE, plugins=PLUGINS, insecure=True,
                                     call_timeout=0.6, health_interval=0.2, health_timeout=0.4,
                                     outlier=OutlierPolicy(consecutive_failures=2, base_ejection_time=1.0,
                                                           max_ejection_time=3.0, max_ejection_percent=67),
                                     grpc_options=FAST_RECONNECT, name="kv-ns", **kw))


def calls(kv: Any, count: int, timeout: float = 0.6) -> list[bytes | BaseException]:
    """``count`` calls; each must end within its deadline (+ slack) whatever happens."""
    out: list[bytes | BaseException] = []
    for _ in range(count):
        started = time.monotonic()
        try:
            out.append(kv.get("__pid__"))
        except (CallTimeoutError, NoEndpointsError) as exc:
            out.append(exc)
        took = time.monotonic() - started
        assert took < timeout + SLACK, f"a call took {took:.2f}s with a {timeout}s deadline"
    return out


def test_kill_partition_and_heal_across_namespaces(sites: list[Site]) -> None:
    a, b, c = sites
    with client_for(sites) as client:
        kv = client.dispense(PLUGIN_NAME)
        first_check_passed(client, a.key, b.key, c.key)  # else the calls may all go to those that passed
        assert set(calls(kv, 30)) == {a.pid, b.pid, c.pid}

        a.replica.kill9()  # refused connections: every call is resent to a live replica
        connection_lost(client, a.key)  # (once seen: a call before that may break in flight, possibly received)
        after_kill = calls(kv, 20)
        assert all(r in (b.pid, c.pid) for r in after_kill), after_kill
        assert wait_until(lambda: client.metrics()["endpoints"][a.key]["healthy"] is False, 10)

        b.ns.partition()  # packets vanish: calls there time out until b is ejected or unhealthy
        results = calls(kv, 30)
        assert all(r == c.pid or isinstance(r, CallTimeoutError) for r in results), results
        assert wait_until(lambda: not client.metrics()["endpoints"][b.key]["healthy"]
                          or client.metrics()["endpoints"][b.key]["ejected"], 10), client.metrics()
        assert calls(kv, 15) == [c.pid] * 15  # only c is left, and every call gets through
        snap = client.metrics()
        assert snap["known"] == 3 and snap["endpoints"][c.key]["healthy"] is True

        b.ns.heal()
        assert wait_until(lambda: client.metrics()["endpoints"][b.key]["healthy"] is True
                          and not client.metrics()["endpoints"][b.key]["ejected"], 20), client.metrics()
        assert set(calls(kv, 20)) == {b.pid, c.pid}


def test_a_slow_replica_is_ejected_and_returns_when_its_latency_goes(sites: list[Site]) -> None:
    a, b, _ = sites
    with client_for(sites[:2]) as client:
        kv = client.dispense(PLUGIN_NAME)
        first_check_passed(client, a.key, b.key)  # else the calls may all go to the one that passed
        assert set(calls(kv, 10)) == {a.pid, b.pid}
        a.delay(1000)  # every packet toward a waits 1 s: longer than a call's deadline
        results = calls(kv, 20)
        assert all(r == b.pid or isinstance(r, CallTimeoutError) for r in results), results
        assert wait_until(lambda: client.metrics()["endpoints"][a.key]["ejections"] >= 1
                          or client.metrics()["endpoints"][a.key]["healthy"] is False, 10), client.metrics()
        assert calls(kv, 10) == [b.pid] * 10
        a.undelay()
        assert wait_until(lambda: client.metrics()["endpoints"][a.key]["healthy"] is True
                          and not client.metrics()["endpoints"][a.key]["ejected"], 20), client.metrics()
        assert a.pid in set(calls(kv, 10))
