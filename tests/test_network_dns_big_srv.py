"""A large SRV answer costs at most max_endpoints targets' lookups: targets are looked up in priority/weight
order until the cap is reached, so start() and the refresh thread are not spent on records the cap drops.
Real DNS (tests/dns_util.py) on 127.0.0.1 that counts the queries it answers."""

from __future__ import annotations

import logging
import time

import pytest
from dnslib import QTYPE, SRV, A, DNSRecord

from tests.dns_util import ZONE, Zone, serving
from tests.resilience_util import wait_until

from plugbay.network.resolver import Endpoint
from plugbay.network.resolvers import MAX_ENDPOINTS, DNSResolver

NAME = f"_kv._tcp.{ZONE}"


class CountingZone(Zone):
    """Notes every queried (name, type); each answer takes ``delay`` seconds (a server across a network)."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.asked: list[tuple[str, str]] = []

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        with self.lock:
            self.asked.append((str(request.q.qname), QTYPE[request.q.qtype]))
        time.sleep(self.delay)
        return super().resolve(request, handler)


def _publish(zone: Zone, count: int) -> None:
    zone.set(NAME, "SRV", [SRV(10, 1, 7001, f"t{i}.{ZONE}") for i in range(count)])
    for i in range(count):
        zone.set(f"t{i}.{ZONE}", "A", [A(f"127.0.{i // 250}.{i % 250 + 1}")])


def test_a_thousand_targets_cost_the_lookups_of_the_endpoints_kept(caplog: pytest.LogCaptureFixture) -> None:
    zone = CountingZone()
    _publish(zone, 1000)
    caplog.set_level(logging.WARNING, logger="plugbay.network")
    with serving(zone) as server:
        resolver = DNSResolver(NAME, srv=True, dns_server=server, allow_loopback=True, timeout=2.0)
        seen: list[list[Endpoint]] = []
        try:
            resolver.start(lambda eps: seen.append(list(eps)), deadline=time.monotonic() + 60)
        finally:
            resolver.close()
    assert len(seen[0]) == MAX_ENDPOINTS
    # one SRV query, then A and AAAA for each target until 256 endpoints are found (it was 2001)
    assert zone.queries <= 2 * MAX_ENDPOINTS + 3, zone.queries
    assert (f"names 1000 target(s); using the first {MAX_ENDPOINTS} endpoints in priority order, without"
            f" looking up the last {1000 - MAX_ENDPOINTS} target(s)") in caplog.text


def test_targets_are_taken_in_priority_then_weight_order_and_the_rest_not_looked_up() -> None:
    zone = CountingZone()
    zone.set(NAME, "SRV", [SRV(20, 9, 7003, f"late.{ZONE}"), SRV(10, 1, 7002, f"light.{ZONE}"),
                           SRV(10, 5, 7001, f"heavy.{ZONE}"), SRV(10, 5, 7004, "127.0.0.9")])
    for i, target in enumerate(("heavy", "light", "late")):
        zone.set(f"{target}.{ZONE}", "A", [A(f"127.0.0.{i + 1}")])
    with serving(zone) as server:
        resolver = DNSResolver(NAME, srv=True, dns_server=server, allow_loopback=True, timeout=2.0, max_endpoints=2)
        seen: list[list[Endpoint]] = []
        try:
            resolver.start(lambda eps: seen.append(list(eps)))
        finally:
            resolver.close()
    # priority 10 first; within it weight 5 (an address target, then heavy by name) before weight 1
    assert [e.key for e in seen[0]] == ["tcp:127.0.0.9:7004", "tcp:127.0.0.1:7001"]
    asked_names = {name for name, _ in zone.asked}
    assert f"light.{ZONE}" not in asked_names and f"late.{ZONE}" not in asked_names, zone.asked


def test_a_slow_server_with_a_large_answer_still_starts_and_refreshes() -> None:
    # 200 targets at 20 ms a query: resolving all (401 queries, 8 s or more) overruns start()'s 5 s and
    # each background lookup's budget (5 x 1 s timeout); the 16 kept cost 33 queries
    zone = CountingZone(delay=0.02)
    _publish(zone, 200)
    with serving(zone) as server:
        resolver = DNSResolver(NAME, srv=True, dns_server=server, allow_loopback=True, timeout=1.0, refresh=0.5,
                               max_endpoints=16)
        seen: list[list[Endpoint]] = []
        try:
            resolver.start(lambda eps: seen.append(list(eps)), deadline=time.monotonic() + 5)
            assert len(seen) == 1 and len(seen[0]) == 16
            first = {e.key for e in seen[0]}
            # the answer changes (a lower priority set comes in): the refresh thread hands it over
            zone.set(NAME, "SRV", [SRV(5, 1, 7009, f"t{i}.{ZONE}") for i in range(200)]
                     + [SRV(10, 1, 7001, f"t{i}.{ZONE}") for i in range(200)])
            assert wait_until(lambda: len(seen) >= 2, 30), (len(seen), resolver.lookups)
            assert len(seen[1]) == 16 and all(e.key.endswith(":7009") for e in seen[1]), seen[1]
            assert first.isdisjoint(e.key for e in seen[1])
        finally:
            resolver.close()


def test_a_targets_rotated_records_give_the_same_order_and_the_warning_tells_no_skipped_target(
        caplog: pytest.LogCaptureFixture) -> None:
    # a server that rotates a target's A records (round-robin DNS) moved pick_first, and changed
    # the capped set, at every refresh; a cap crossed inside the last target skips no target
    zone = CountingZone()
    zone.set(NAME, "SRV", [SRV(10, 1, 7001, f"t.{ZONE}")])
    zone.set(f"t.{ZONE}", "A", [A("127.0.0.2"), A("127.0.0.1"), A("127.0.0.3")])
    caplog.set_level(logging.WARNING, logger="plugbay.network")
    with serving(zone) as server:
        resolver = DNSResolver(NAME, srv=True, dns_server=server, allow_loopback=True, timeout=2.0, max_endpoints=2)
        seen: list[list[Endpoint]] = []
        try:
            resolver.start(lambda eps: seen.append(list(eps)))
            zone.set(f"t.{ZONE}", "A", [A("127.0.0.3"), A("127.0.0.1"), A("127.0.0.2")])
            lookups = resolver.lookups
            resolver.refresh()
            assert wait_until(lambda: resolver.lookups > lookups, 10)
        finally:
            resolver.close()
    assert [[e.key for e in s] for s in seen] == [["tcp:127.0.0.1:7001", "tcp:127.0.0.2:7001"]]  # no change told
    assert "names 1 target(s); using the first 2 endpoints in priority order: each" in caplog.text
    assert "without looking up" not in caplog.text


@pytest.mark.parametrize("records", ["none", "link-local"])
def test_targets_that_yield_nothing_are_looked_up_at_most_max_endpoints_times(
        records: str, caplog: pytest.LogCaptureFixture) -> None:
    # targets without a usable address never reached the cap: every one cost two queries at every lookup
    zone = CountingZone()
    zone.set(NAME, "SRV", [SRV(10, 1, 7001, f"t{i}.{ZONE}") for i in range(200)])
    if records == "link-local":
        for i in range(200):
            zone.set(f"t{i}.{ZONE}", "A", [A("169.254.169.254")])
    caplog.set_level(logging.WARNING, logger="plugbay.network")
    with serving(zone) as server:
        resolver = DNSResolver(NAME, srv=True, dns_server=server, allow_loopback=True, timeout=2.0, max_endpoints=16)
        seen: list[list[Endpoint]] = []
        try:
            resolver.start(lambda eps: seen.append(list(eps)), deadline=time.monotonic() + 60)
        finally:
            resolver.close()
    assert seen == [[]]
    assert zone.queries <= 2 * 16 + 1, zone.queries
    assert ("names 200 target(s); using the first 0 endpoints in priority order, without looking up the last"
            " 184 target(s) (at most 16 targets are looked up, whatever they yield)") in caplog.text
