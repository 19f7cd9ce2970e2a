"""A DNS lookup under way ends when discovery is closed (a kill during start(), a client's close()),
and a lookup in the background has an overall time budget. Real DNS (tests/dns_util.py) whose
"slow" names go unanswered for longer than the resolver waits for one query."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest
from dnslib import SRV, DNSRecord

from tests.dns_util import ZONE, Zone, serving
from tests.net_util import HANDSHAKE, PLUGINS
from tests.resilience_util import wait_until

from plugbay import ClientStateError, RemoteClient, RemoteConfig
from plugbay.network.resolvers import DNSResolver

NAME = f"_kv._tcp.{ZONE}"
SLOW_TARGETS = [SRV(0, 0, 7001, f"slow{i}.{ZONE}") for i in range(10)]  # 20 queries of a whole timeout each


class SlowZone(Zone):
    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        if str(request.q.qname).startswith("slow"):
            self.release.wait(3.0)  # longer than the resolver waits for one answer
        return super().resolve(request, handler)


@pytest.fixture()
def slow_dns() -> Iterator[tuple[SlowZone, str]]:
    zone = SlowZone()
    with serving(zone) as server:
        try:
            yield zone, server
        finally:
            zone.release.set()  # the server's handler threads end before it stops


def _dns_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("plugbay-dns-")]


def test_kill_during_a_dns_lookup_ends_start_within_one_query(slow_dns: tuple[SlowZone, str]) -> None:
    zone, server = slow_dns
    zone.set(NAME, "SRV", SLOW_TARGETS)
    client = RemoteClient(RemoteConfig(target=f"dns+srv:///{NAME}", handshake=HANDSHAKE, plugins=PLUGINS,
                                       insecure=True, dns_server=server, allow_loopback=True,
                                       start_timeout=30.0, name="kv-kill-dns"))
    ended: list[BaseException | None] = []

    def start() -> None:
        try:
            client.start()
            ended.append(None)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            ended.append(exc)

    starter = threading.Thread(target=start)
    starter.start()
    time.sleep(0.5)  # into the lookup's queries
    began = time.monotonic()
    client.kill()
    starter.join(10)
    took = time.monotonic() - began
    assert not starter.is_alive()
    # one DNS query (2 s) may still run out; not the 40 s the whole lookup takes, nor start_timeout
    assert took < 6.0, f"start() ended {took:.1f}s after kill()"
    assert len(ended) == 1 and isinstance(ended[0], ClientStateError), ended


def test_close_ends_a_background_lookup_and_its_thread(slow_dns: tuple[SlowZone, str]) -> None:
    zone, server = slow_dns
    zone.set(NAME, "SRV", [SRV(0, 0, 7001, "127.0.0.1")])
    resolver = DNSResolver(NAME, srv=True, dns_server=server, allow_loopback=True, refresh=0.2, name="kv-close-dns")
    sets: list[object] = []
    try:
        resolver.start(sets.append)
        zone.set(NAME, "SRV", SLOW_TARGETS)
        lookups = resolver.lookups
        assert wait_until(lambda: resolver.lookups > lookups, 10)
        time.sleep(0.5)  # into the lookup's queries
        began = time.monotonic()
        resolver.close()
        took = time.monotonic() - began
        assert took < 5.0, f"close() took {took:.1f}s"
        assert not _dns_threads(), _dns_threads()
        assert len(sets) == 1  # the cut-short lookup reported nothing
    finally:
        resolver.close()


def test_a_background_lookup_ends_at_its_budget_and_keeps_the_set(slow_dns: tuple[SlowZone, str],
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    zone, server = slow_dns
    zone.set(NAME, "SRV", [SRV(0, 0, 7001, "127.0.0.1")])
    # queries of 0.3 s: a lookup has 1.5 s, where the 20 slow queries would take 6 s
    resolver = DNSResolver(NAME, srv=True, dns_server=server, allow_loopback=True, refresh=0.2, timeout=0.3,
                           name="kv-budget-dns")
    sets: list[object] = []
    caplog.set_level(logging.WARNING, logger="plugbay.network")
    try:
        resolver.start(sets.append)
        zone.set(NAME, "SRV", SLOW_TARGETS)
        began = time.monotonic()
        assert wait_until(lambda: "did not finish in 1.5s" in caplog.text, 10), caplog.text
        assert time.monotonic() - began < 5.0
        assert "keeping the 1 endpoint(s) known" in caplog.text and len(sets) == 1
    finally:
        resolver.close()
