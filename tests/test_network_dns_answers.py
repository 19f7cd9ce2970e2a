"""DNS answers that are not plain records, against a real DNS server (dnslib) on 127.0.0.1.

Odd response codes are typed errors and never stop the refresh thread; SRV
records are read as RFC 2782 says (target "." = no service, port 0 = no port,
lower priorities first); an answer too large is capped. No query leaves
loopback: every resolver gets dns_server=.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest
from dnslib import QTYPE, RCODE, SRV, A, DNSRecord

from tests.dns_util import ZONE, Zone, serving
from tests.net_util import HANDSHAKE, PLUGINS
from tests.resilience_util import wait_until

from plugbay import DiscoveryError, HandshakeTimeoutError, RemoteClient, RemoteConfig
from plugbay.network.resolver import Endpoint
from plugbay.network.resolvers import DNSResolver

@pytest.fixture()
def dns() -> Iterator[tuple[Zone, str]]:
    zone = Zone()
    with serving(zone) as address:
        yield zone, address


@pytest.mark.parametrize("rcode", ["YXDOMAIN", "REFUSED"])
def test_an_odd_response_code_is_a_discovery_error(dns: tuple[Zone, str], rcode: str) -> None:
    zone, server = dns
    zone.rcode = getattr(RCODE, rcode)
    resolver = DNSResolver("kv.plugbay.test", 7001, dns_server=server, allow_loopback=True, timeout=1.0)
    with pytest.raises(DiscoveryError) as err:
        resolver.start(lambda eps: None)
    assert "DNS lookup of 'kv.plugbay.test' (A/AAAA)" in str(err.value)
    if rcode == "REFUSED":  # it answered: the code is named with what it means, not "check that it is reachable"
        assert "answered REFUSED" in str(err.value) and "reachable" not in str(err.value), str(err.value)
        assert "REFUSED is a refusal" in str(err.value)
    else:  # dnspython's own YXDOMAIN error, which says what it is
        assert "Check that the DNS server is reachable and serves that name" in str(err.value)


def test_a_dns_server_that_never_answers_is_named_once_without_advice_to_name_one() -> None:
    # the server named by dns_server stays silent: the error read "...timed out.. Check ..., or pass
    # dns_server='IP:PORT'", advice to pass what was passed
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        server = f"127.0.0.1:{silent.getsockname()[1]}"
        resolver = DNSResolver("kv.plugbay.test", 7001, dns_server=server, allow_loopback=True, timeout=0.3)
        with pytest.raises(DiscoveryError) as err:
            resolver.start(lambda eps: None)
    text = str(err.value)
    assert f"at {server} failed" in text and "timed out" in text
    assert ".." not in text and "pass dns_server" not in text
    assert text.endswith("Check that the DNS server is reachable and serves that name")


class PartlyBroken(Zone):
    """Answers SERVFAIL to the (name, type) queries in ``broken``, the rest as the zone says."""

    def __init__(self) -> None:
        super().__init__()
        self.broken: set[tuple[str, str]] = set()

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        if (str(request.q.qname), QTYPE[request.q.qtype]) in self.broken:
            reply = request.reply()
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        return super().resolve(request, handler)


def test_one_failing_query_keeps_the_records_the_others_found() -> None:
    zone = PartlyBroken()
    zone.set(f"kv.{ZONE}", "A", [A("127.0.0.1")])
    zone.broken.add((f"kv.{ZONE}", "AAAA"))  # a resolver that fails AAAA (as some filtering ones do)
    zone.set(f"_kv._tcp.{ZONE}", "SRV", [SRV(10, 1, 7001, f"good.{ZONE}"), SRV(20, 1, 7002, f"bad.{ZONE}")])
    zone.set(f"good.{ZONE}", "A", [A("127.0.0.2")])
    zone.broken.add((f"bad.{ZONE}", "A"))
    with serving(zone) as server:
        assert _keys(server, "kv.plugbay.test") == ["tcp:127.0.0.1:7001"]
        assert _keys(server, "_kv._tcp.plugbay.test", srv=True) == ["tcp:127.0.0.2:7001"]
        # nothing came back but failures: still a typed error, not an empty set
        zone.broken |= {(f"kv.{ZONE}", "A"), (f"good.{ZONE}", "A"), (f"good.{ZONE}", "AAAA")}
        for name, srv in (("kv.plugbay.test", False), ("_kv._tcp.plugbay.test", True)):
            with pytest.raises(DiscoveryError, match="answered SERVFAIL.*SERVFAIL is a server failure"):
                _keys(server, name, srv=srv)


def test_an_odd_answer_does_not_stop_discovery(dns: tuple[Zone, str]) -> None:
    zone, server = dns
    zone.set(f"kv.{ZONE}", "A", [A("127.0.0.1")])
    resolver = DNSResolver("kv.plugbay.test", 7001, dns_server=server, allow_loopback=True, refresh=0.1, timeout=1.0)
    seen: list[list[Endpoint]] = []
    resolver.start(lambda eps: seen.append(list(eps)))
    try:
        assert [e.key for e in seen[0]] == ["tcp:127.0.0.1:7001"]
        queries = zone.queries
        zone.rcode = RCODE.YXDOMAIN  # the refresh thread meets it a few times...
        assert wait_until(lambda: zone.queries >= queries + 3, 10)
        with zone.lock:
            zone.rcode = None
        zone.set(f"kv.{ZONE}", "A", [A("127.0.0.2")])  # ...and still sees the next change
        assert wait_until(lambda: [e.key for e in seen[-1]] == ["tcp:127.0.0.2:7001"], 10), seen
        assert len(seen) == 2  # the odd answers kept the last set (no empty set in between)
    finally:
        resolver.close()


def _keys(server: str, name: str, **kw: object) -> list[str]:
    resolver = DNSResolver(name, 7001, dns_server=server, allow_loopback=True, timeout=1.0,
                           **kw)  # type: ignore[arg-type]
    seen: list[list[Endpoint]] = []
    resolver.start(lambda eps: seen.append(list(eps)))
    resolver.close()
    return [e.key for e in seen[0]]


def test_srv_records_are_read_as_rfc_2782_says(dns: tuple[Zone, str]) -> None:
    zone, server = dns
    zone.set(f"kv-a.{ZONE}", "A", [A("127.0.0.2")])  # the primary sorts after the backup by address
    zone.set(f"kv-b.{ZONE}", "A", [A("127.0.0.1")])
    zone.set(".", "A", [A("127.0.0.9")])  # were "." looked up as a name, it would become an endpoint
    # port 0 is no port; every target is an endpoint, lower priorities first (a backup listed last
    # is what pick_first fails over to when the primaries are down)
    zone.set(f"_kv._tcp.{ZONE}", "SRV", [SRV(20, 5, 7002, f"kv-b.{ZONE}"), SRV(10, 5, 7001, f"kv-a.{ZONE}"),
                                        SRV(10, 5, 0, f"kv-a.{ZONE}")])
    assert _keys(server, "_kv._tcp.plugbay.test", srv=True) == ["tcp:127.0.0.2:7001", "tcp:127.0.0.1:7002"]
    # the primaries gone from DNS (their name has no address): the backup alone
    zone.set(f"kv-a.{ZONE}", "A", [])
    assert _keys(server, "_kv._tcp.plugbay.test", srv=True) == ["tcp:127.0.0.1:7002"]
    zone.set(f"_none._tcp.{ZONE}", "SRV", [SRV(0, 0, 0, ".")])  # "decidedly not available at this domain"
    assert _keys(server, "_none._tcp.plugbay.test", srv=True) == []


def test_an_answer_with_too_many_addresses_is_capped_with_a_warning(dns: tuple[Zone, str],
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    zone, server = dns
    zone.set(f"many.{ZONE}", "A", [A(f"127.0.1.{i}") for i in range(1, 9)])
    caplog.set_level(logging.WARNING, logger="plugbay.network")
    keys = _keys(server, "many.plugbay.test", max_endpoints=5)
    assert keys == [f"tcp:127.0.1.{i}:7001" for i in range(1, 6)]
    assert "DNS answered 8 endpoints for 'many.plugbay.test'; using the first 5" in caplog.text
    from plugbay.network.resolvers import MAX_ENDPOINTS

    assert MAX_ENDPOINTS == 256  # the documented default (docs/network-host.md)


def test_addresses_that_cannot_be_replicas_are_skipped_with_one_warning(dns: tuple[Zone, str],
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    # a spoofed or careless answer must not aim health checks at the cloud's metadata service
    # (link-local, or AWS's IPv6 one), nor at unspecified, multicast or broadcast addresses
    from dnslib import AAAA

    zone, server = dns
    bad = ["169.254.169.254", "0.0.0.0", "224.0.0.1", "255.255.255.255"]
    # AWS's IPv6 metadata service and 169.254.169.254 reached through NAT64 and 6to4
    cloud = ["fd00:ec2::254", "fd00:ec2::123", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1"]
    # Azure's wire server, Alibaba Cloud's metadata, 169.254.169.254 through the local-use NAT64 prefix and
    # the IPv4-compatible form, and a Teredo address
    other = [("168.63.129.16", "(168.63.129.16 is Azure's wire server"),
             ("100.100.100.200", "(100.100.100.200 is Alibaba Cloud's instance metadata"),
             ("64:ff9b:1::a9fe:a9fe", "carries the IPv4 address 169.254.169.254 (local-use NAT64"),
             ("::a9fe:a9fe", "carries the IPv4 address 169.254.169.254 (IPv4-compatible"),
             ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "(Teredo, 2001::/32")]
    zone.set(f"odd.{ZONE}", "A", [A(a) for a in [*bad, other[0][0], other[1][0], "127.0.0.9"]])
    zone.set(f"odd.{ZONE}", "AAAA", [AAAA("fe80::1"), AAAA("::"), AAAA("ff02::1"), AAAA("::ffff:a9fe:a9fe"),
                                     *[AAAA(a) for a in [*cloud, *[a for a, _ in other[2:]]]], AAAA("::1")])
    zone.set(f"_kv._tcp.odd.{ZONE}", "SRV", [SRV(0, 0, 7002, f"odd.{ZONE}")])
    caplog.set_level(logging.WARNING, logger="plugbay.network")
    resolver = DNSResolver(f"odd.{ZONE}".rstrip("."), 7001, dns_server=server, allow_loopback=True, timeout=1.0)
    seen: list[list[Endpoint]] = []
    resolver.start(lambda eps: seen.append(list(eps)))
    try:
        assert [e.key for e in seen[0]] == ["tcp:127.0.0.9:7001", "tcp:[::1]:7001"]
        resolver.refresh()
        assert wait_until(lambda: resolver.lookups >= 2, 10)
    finally:
        resolver.close()
    for a in [*bad, "fe80::1", "::", "ff02::1"]:
        assert caplog.text.count(f"names {a}, which cannot be a replica") == 1, a  # once, not per lookup
    # the metadata address mapped into IPv6 (dialled as the IPv4 address), in either spelling
    assert caplog.text.count("names ::ffff:169.254.169.254, which") + caplog.text.count(
        "names ::ffff:a9fe:a9fe, which") == 1
    for a in cloud[:2]:
        assert caplog.text.count(f"names {a}, which cannot be a replica (fd00:ec2::/64 is AWS's") == 1, a
    for a, form in [(cloud[2], "NAT64"), (cloud[3], "6to4")]:
        assert caplog.text.count(f"names {a}, which carries the IPv4 address 169.254.169.254 ({form}") == 1, a
    for a, why in other:
        spelt = "::169.254.169.254" if a == "::a9fe:a9fe" else a  # as the DNS library spells the answer
        assert caplog.text.count(f"names {spelt}, which ") == 1, a
        assert why in caplog.text.split(f"names {spelt}, which ", 1)[1].split("\n", 1)[0], a
    srv = _keys(server, f"_kv._tcp.odd.{ZONE}".rstrip("."), srv=True)
    assert srv == ["tcp:127.0.0.9:7002", "tcp:[::1]:7002"]


def test_an_srv_target_that_is_an_address_is_one_endpoint_however_it_is_spelt(
        dns: tuple[Zone, str], caplog: pytest.LogCaptureFixture) -> None:
    """Each spelling of one IPv6 address (case, zeros, a zone index) was an endpoint of its own: N channels
    and N health checks for one replica."""
    zone, server = dns
    spellings = ["fd00::1", "FD00:0:0::1", "fd00:0000::0001", "fd00::1%eth0", "fd00::1%eth1", "10.0.0.7"]
    zone.set(f"_kv._tcp.{ZONE}", "SRV", [SRV(1, 1, 7000, f"{t}.") for t in spellings])
    caplog.set_level(logging.WARNING, logger="plugbay.network")
    assert sorted(_keys(server, "_kv._tcp.plugbay.test", srv=True)) == ["tcp:10.0.0.7:7000", "tcp:[fd00::1]:7000"]
    assert "names fd00::1%eth0, which carries a zone index" in caplog.text


class SlowZone(Zone):
    """Answers every query after ``delay`` seconds; ``asked``: each query's (name, type), as it came."""

    delay = 0.4

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[str, str]] = []

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        with self.lock:
            self.asked.append((str(request.q.qname), QTYPE[request.q.qtype]))
        time.sleep(self.delay)
        return super().resolve(request, handler)


def test_start_timeout_covers_discovery() -> None:
    """start() looked every SRV target up to the end (1 + 16 queries, 0.4 s each) whatever start_timeout said:
    now the lookups are given up once start_timeout is spent, so the later targets are never asked for."""
    zone = SlowZone()
    with serving(zone) as server:
        targets = [SRV(10, 5, 7001, f"kv-{i}.{ZONE}") for i in range(8)]  # 1 + 16 queries of 0.4 s each
        zone.set(f"_kv._tcp.{ZONE}", "SRV", targets)
        for i in range(8):
            zone.set(f"kv-{i}.{ZONE}", "A", [A(f"127.0.0.{i + 1}")])
        cfg = RemoteConfig(target="dns+srv:///_kv._tcp.plugbay.test", handshake=HANDSHAKE, plugins=PLUGINS,
                           insecure=True, dns_server=server, allow_loopback=True,
                           start_timeout=1.0, name="kv-slow-dns")
        with pytest.raises(HandshakeTimeoutError) as err:
            RemoteClient(cfg).start()
        with zone.lock:
            asked = list(zone.asked)
    assert "did not finish within start_timeout (1.0s)" in str(err.value)
    # the queries go one after another, each answered 0.4 s later: within the 1 s only the first few were
    # asked, and start() did not go on with the rest (the last target's, run to the end, would be there)
    assert (f"kv-7.{ZONE}", "A") not in asked and len(asked) < 17, asked
