"""DNS discovery against a real DNS server (dnslib) on 127.0.0.1: records added or removed change the pool.

The replicas are net_kv processes on 127.0.0.1 and ::1 (the same port), so an
A and an AAAA record name two real endpoints; SRV records name ports on
127.0.0.1. No query ever leaves loopback: every resolver gets dns_server=.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest
from dnslib import AAAA, CNAME, RCODE, SRV, TXT, A

from tests.cli_util import plugbay
from tests.dns_util import ZONE, Zone, serving
from tests.net_util import HANDSHAKE, PLUGIN_NAME, PLUGINS, Replica, connection_lost, first_check_passed
from tests.resilience_util import wait_until

from plugbay import DiscoveryError, HandshakeTimeoutError, RemoteClient, RemoteConfig
from plugbay.network.resolvers import DNSResolver

@pytest.fixture()
def dns() -> Iterator[tuple[Zone, str]]:
    zone = Zone()
    with serving(zone) as address:
        yield zone, address


def free_dual_port() -> int:
    for _ in range(20):
        with socket.socket() as s4:
            s4.bind(("127.0.0.1", 0))
            port = int(s4.getsockname()[1])
            try:
                with socket.socket(socket.AF_INET6) as s6:
                    s6.bind(("::1", port))
                    return port
            except OSError:
                continue
    pytest.skip("no port free on both 127.0.0.1 and ::1 (or no IPv6 loopback)")


def test_a_and_aaaa_records_added_and_removed_change_the_pool(dns: tuple[Zone, str]) -> None:
    zone, server = dns
    port = free_dual_port()
    v4, v6 = Replica(f"127.0.0.1:{port}"), Replica(f"[::1]:{port}")
    try:
        zone.set(f"kv.{ZONE}", "A", [A("127.0.0.1")])
        cfg = RemoteConfig(target=f"dns:///kv.plugbay.test:{port}", handshake=HANDSHAKE, plugins=PLUGINS,
                           insecure=True, dns_server=server, allow_loopback=True, dns_refresh=0.3, health_interval=0.2,
                           call_timeout=2.0, name="kv-dns")
        with RemoteClient(cfg) as client:
            kv = client.dispense(PLUGIN_NAME)
            assert set(client.metrics()["endpoints"]) == {f"tcp:127.0.0.1:{port}"}
            assert {kv.get("__pid__") for _ in range(4)} == {str(v4.proc.pid).encode()}
            zone.set(f"kv.{ZONE}", "AAAA", [AAAA("::1")])  # a replica joins
            assert wait_until(lambda: client.metrics()["known"] == 2, 10), client.metrics()
            assert set(client.metrics()["endpoints"]) == {f"tcp:127.0.0.1:{port}", f"tcp:[::1]:{port}"}
            assert wait_until(lambda: client.metrics()["healthy"] == 2, 10)
            assert {kv.get("__pid__") for _ in range(6)} == {str(v4.proc.pid).encode(),
                                                             str(v6.proc.pid).encode()}
            zone.set(f"kv.{ZONE}", "A", [])  # and one leaves
            assert wait_until(lambda: client.metrics()["known"] == 1, 10), client.metrics()
            assert {kv.get("__pid__") for _ in range(4)} == {str(v6.proc.pid).encode()}
    finally:
        v4.stop()
        v6.stop()


@contextlib.contextmanager
def _v4_and_v6_replicas(zone: Zone, server: str, name: str) -> Iterator[tuple[RemoteClient, Replica, Replica]]:
    """A client of kv.plugbay.test (DNS asked again only every 600 s) and its two replicas, one per family."""
    port = free_dual_port()
    v4, v6 = Replica(f"127.0.0.1:{port}"), Replica(f"[::1]:{port}")
    try:
        zone.set(f"kv.{ZONE}", "A", [A("127.0.0.1")])
        zone.set(f"kv.{ZONE}", "AAAA", [AAAA("::1")])
        cfg = RemoteConfig(target=f"dns:///kv.plugbay.test:{port}", handshake=HANDSHAKE, plugins=PLUGINS,
                           insecure=True, dns_server=server, allow_loopback=True, dns_refresh=600,
                           call_timeout=2.0, name=name)
        with RemoteClient(cfg) as client:
            yield client, v4, v6
    finally:
        v4.stop()
        v6.stop()


def test_failing_calls_make_discovery_look_again_before_its_interval(dns: tuple[Zone, str]) -> None:
    zone, server = dns
    with _v4_and_v6_replicas(zone, server, "kv-dns") as (client, v4, v6):
        kv = client.dispense(PLUGIN_NAME)
        assert client.metrics()["known"] == 2
        first_check_passed(client, f"tcp:{v4.address}")  # else no call may go there, to fail and ask DNS
        zone.set(f"kv.{ZONE}", "A", [])
        v4.kill9()
        connection_lost(client, f"tcp:{v4.address}")  # else a call may break in flight, possibly received
        for _ in range(6):  # the failures toward the dead replica ask DNS again at once
            assert kv.get("__pid__") == str(v6.proc.pid).encode()
        assert wait_until(lambda: client.metrics()["known"] == 1, 10), client.metrics()


def test_an_endpoint_going_unhealthy_makes_discovery_look_again(dns: tuple[Zone, str]) -> None:
    # No call fails here: the health watch alone sees the replica go, and that must ask DNS again too.
    zone, server = dns
    with _v4_and_v6_replicas(zone, server, "kv-dns-health") as (client, v4, _):
        client.dispense(PLUGIN_NAME)
        assert client.metrics()["known"] == 2
        queries = zone.queries
        zone.set(f"kv.{ZONE}", "A", [])
        v4.kill9()
        assert wait_until(lambda: client.metrics()["known"] == 1, 15), client.metrics()
        assert zone.queries > queries


def test_srv_records_carry_hosts_and_ports(dns: tuple[Zone, str]) -> None:
    zone, server = dns
    a, b = Replica("127.0.0.1:0"), Replica("127.0.0.1:0")
    try:
        zone.set(f"kv-host.{ZONE}", "A", [A("127.0.0.1")])
        zone.set(f"_kv._tcp.{ZONE}", "SRV", [SRV(10, 5, a.port, f"kv-host.{ZONE}"),
                                            SRV(10, 5, b.port, f"kv-host.{ZONE}")])
        cfg = RemoteConfig(target="dns+srv:///_kv._tcp.plugbay.test", handshake=HANDSHAKE, plugins=PLUGINS,
                           insecure=True, dns_server=server, allow_loopback=True, dns_refresh=0.3,
                           call_timeout=2.0, name="kv-srv")
        with RemoteClient(cfg) as client:
            kv = client.dispense(PLUGIN_NAME)
            assert set(client.metrics()["endpoints"]) == {f"tcp:127.0.0.1:{a.port}", f"tcp:127.0.0.1:{b.port}"}
            first_check_passed(client, *client.metrics()["endpoints"])  # else all four may go to one
            assert {kv.get("__pid__") for _ in range(4)} == {str(a.proc.pid).encode(), str(b.proc.pid).encode()}
            zone.set(f"_kv._tcp.{ZONE}", "SRV", [SRV(10, 5, b.port, f"kv-host.{ZONE}")])
            assert wait_until(lambda: client.metrics()["known"] == 1, 10), client.metrics()
            assert {kv.get("__pid__") for _ in range(4)} == {str(b.proc.pid).encode()}
    finally:
        a.stop()
        b.stop()


def test_an_srv_name_without_service_labels_is_asked_as_written_and_its_empty_answer_says_where_srv_lives(
        dns: tuple[Zone, str]) -> None:
    # SRV records at a plain name are legal and served (Consul's kv.service.consul, CoreDNS's Service
    # names), so such a name is looked up, not refused; when it has none, the note says where they usually are
    zone, server = dns
    zone.set(f"kv-host.{ZONE}", "A", [A("127.0.0.1")])
    zone.set(f"plain.{ZONE}", "SRV", [SRV(10, 5, 7001, f"kv-host.{ZONE}")])
    plain = DNSResolver("plain.plugbay.test", srv=True, dns_server=server, allow_loopback=True)
    assert [e.address for e in plain.resolve()] == ["127.0.0.1:7001"] and plain.empty_note == ""
    hint = ("(SRV records usually live under _SERVICE._PROTO.: write dns+srv:///_SERVICE._tcp.kv-host.plugbay.test,"
            " or dns:///kv-host.plugbay.test:PORT for its A/AAAA records)")
    slip = DNSResolver("kv-host.plugbay.test", srv=True, dns_server=server, allow_loopback=True)
    assert slip.resolve() == [] and slip.empty_note == f"DNS at {server}: kv-host.plugbay.test has no SRV record {hint}"
    labelled = DNSResolver("_kv._tcp.plugbay.test", srv=True, dns_server=server, allow_loopback=True)
    assert labelled.resolve() == [] and labelled.empty_note.endswith("_kv._tcp.plugbay.test does not exist (NXDOMAIN)")
    out = plugbay("health", f"dns+srv://{server}/kv-host.plugbay.test", "--insecure", "--allow-loopback")
    assert out.returncode == 3 and hint in out.stdout, out


def test_the_note_says_where_srv_records_live_only_when_the_name_has_none(dns: tuple[Zone, str]) -> None:
    # SRV records found at a plain name whose target has no address, or whose target is ".", are that
    # answer's to fix: "SRV records usually live under _SERVICE._PROTO." would send the user away from them
    zone, server = dns
    zone.set(f"plain.{ZONE}", "SRV", [SRV(10, 5, 7001, f"nowhere.{ZONE}")])
    plain = DNSResolver("plain.plugbay.test", srv=True, dns_server=server, allow_loopback=True)
    assert plain.resolve() == []
    assert plain.empty_note == f"DNS at {server}: nowhere.plugbay.test does not exist (NXDOMAIN)"
    zone.set(f"off.{ZONE}", "SRV", [SRV(0, 0, 0, ".")])
    off = DNSResolver("off.plugbay.test", srv=True, dns_server=server, allow_loopback=True)
    assert off.resolve() == [] and off.empty_note == \
        f"DNS at {server}: the SRV records of off.plugbay.test say the service is not available (target '.')"
    # a name that does not exist has no A/AAAA records either: only _SERVICE._PROTO. is suggested
    gone = DNSResolver("gone.plugbay.test", srv=True, dns_server=server, allow_loopback=True)
    assert gone.resolve() == [] and gone.empty_note == (
        f"DNS at {server}: gone.plugbay.test does not exist (NXDOMAIN) (SRV records usually live under"
        " _SERVICE._PROTO.: write dns+srv:///_SERVICE._tcp.gone.plugbay.test)")


def test_an_unreachable_dns_server_is_a_discovery_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))  # bound, never answering: the lookup times out
        port = s.getsockname()[1]
        resolver = DNSResolver("kv.plugbay.test", 7001, dns_server=f"127.0.0.1:{port}", allow_loopback=True,
                               timeout=0.5)
        with pytest.raises(DiscoveryError) as err:
            resolver.start(lambda eps: None)
    assert f"DNS lookup of 'kv.plugbay.test' (A/AAAA) at 127.0.0.1:{port} failed" in str(err.value)
    assert "Check that the DNS server is reachable" in str(err.value)


def test_a_name_without_records_resolves_to_no_endpoints(dns: tuple[Zone, str]) -> None:
    zone, server = dns
    resolver = DNSResolver("missing.plugbay.test", 7001, dns_server=server, allow_loopback=True)
    seen: list[int] = []
    resolver.start(lambda eps: seen.append(len(eps)))
    resolver.close()
    assert seen == [0] and zone.queries >= 1


def test_why_a_lookup_found_nothing_is_in_the_error_of_a_start_that_waited_for_an_endpoint(
        dns: tuple[Zone, str]) -> None:
    # a misspelt name (NXDOMAIN) and a name without address records wait the same way, for a record that
    # may yet be published; the timeout then says which it was
    zone, server = dns
    zone.set(f"txt.{ZONE}", "TXT", [TXT("not an address")])
    said = {}
    for name in ("kv", "txt"):
        cfg = RemoteConfig(target=f"dns:///{name}.plugbay.test:7001", handshake=HANDSHAKE, plugins=PLUGINS,
                           insecure=True, dns_server=server, allow_loopback=True, start_timeout=3.0,
                           name="kv-dns-missing")
        client = RemoteClient(cfg)
        with pytest.raises(HandshakeTimeoutError) as err:
            client.start()
        client.kill()
        said[name] = str(err.value)
    assert f"discovery reports no endpoints (DNS at {server}: kv.plugbay.test does not exist (NXDOMAIN))" \
        in said["kv"]
    assert f"(DNS at {server}: txt.plugbay.test has no A or AAAA record)" in said["txt"]
    resolver = DNSResolver("txt.plugbay.test", 7001, dns_server=server, allow_loopback=True)
    assert resolver.resolve() == [] and "has no A or AAAA record" in resolver.empty_note
    zone.set(f"txt.{ZONE}", "A", [A("127.0.0.1")])
    assert len(resolver.resolve()) == 1 and resolver.empty_note == ""
    # a lookup that fails leaves the set as it was: when that is empty, the failure is why, not the
    # answer before it
    missing = DNSResolver("kv.plugbay.test", 7001, dns_server=server, allow_loopback=True, timeout=5.0)
    assert missing.resolve() == [] and "NXDOMAIN" in missing.empty_note
    zone.rcode = RCODE.SERVFAIL
    with pytest.raises(DiscoveryError):
        missing.resolve()
    assert missing.empty_note.startswith("the last DNS lookup failed: ") and "SERVFAIL" in missing.empty_note
    zone.rcode = None
    # records that are there but name no replica are not "no record"
    zone.set(f"meta.{ZONE}", "A", [A("169.254.169.254")])
    meta = DNSResolver("meta.plugbay.test", 7001, dns_server=server, allow_loopback=True)
    assert meta.resolve() == [] and "names only addresses that cannot be replicas (169.254.169.254)" \
        in meta.empty_note
    # an SRV answer of "." says the service is not available; an absolute name is spelt as written
    zone.set(f"_off._tcp.{ZONE}", "SRV", [SRV(0, 0, 0, ".")])
    off = DNSResolver("_off._tcp.plugbay.test", srv=True, dns_server=server, allow_loopback=True)
    assert off.resolve() == [] and "the SRV records of _off._tcp.plugbay.test say the service is not available" \
        in off.empty_note
    absolute = DNSResolver("kv.plugbay.test.", 7001, dns_server=server, allow_loopback=True)
    assert absolute.resolve() == [] and absolute.empty_note.endswith(": kv.plugbay.test does not exist (NXDOMAIN)")
    # the command line's "no ready endpoint" says it too
    out = plugbay("health", f"dns://{server}/kv.plugbay.test:7001", "--insecure", "--allow-loopback")
    assert out.returncode == 3 and "kv.plugbay.test does not exist (NXDOMAIN)" in out.stdout, out


def test_an_alias_whose_target_has_no_records_is_named_with_its_target(dns: tuple[Zone, str]) -> None:
    # the name to publish or fix is the alias's target: "kv does not exist" would send the user to a
    # record that is there
    zone, server = dns
    zone.set(f"kv.{ZONE}", "CNAME", [CNAME(f"gone.{ZONE}")])
    resolver = DNSResolver("kv.plugbay.test", 7001, dns_server=server, allow_loopback=True)
    assert resolver.resolve() == []
    assert resolver.empty_note == (f"DNS at {server}: gone.plugbay.test (the target of the alias kv.plugbay.test)"
                                   " does not exist (NXDOMAIN)")
    zone.set(f"gone.{ZONE}", "TXT", [TXT("not an address")])
    assert resolver.resolve() == []
    assert resolver.empty_note == (f"DNS at {server}: gone.plugbay.test (the target of the alias kv.plugbay.test)"
                                   " has no A or AAAA record")
    zone.set(f"gone.{ZONE}", "A", [A("127.0.0.1")])
    assert [e.address for e in resolver.resolve()] == ["127.0.0.1:7001"] and resolver.empty_note == ""


def test_a_name_whose_record_appears_after_start_is_looked_up_again_while_calls_wait(
        dns: tuple[Zone, str]) -> None:
    # a deployment and its host rolling out together: the record is not there yet when start() asks
    zone, server = dns
    zone.set(f"other.{ZONE}", "A", [A("127.0.0.9")])  # the zone answers; kv has no record yet
    rep = Replica("127.0.0.1:0")
    try:
        cfg = RemoteConfig(target=f"dns:///kv.plugbay.test:{rep.port}", handshake=HANDSHAKE, plugins=PLUGINS,
                           insecure=True, dns_server=server, allow_loopback=True, start_timeout=15.0,
                           name="kv-dns-late")
        client = RemoteClient(cfg)  # dns_refresh is its default, 30 s: longer than start_timeout
        later = threading.Timer(0.5, lambda: zone.set(f"kv.{ZONE}", "A", [A("127.0.0.1")]))
        later.start()
        try:
            client.start()  # waits for an endpoint; the empty answer must not stand until dns_refresh
            kv = client.dispense(PLUGIN_NAME)
            assert kv.get("__pid__") == str(rep.proc.pid).encode()
        finally:
            later.join(5)
            client.kill()
    finally:
        rep.stop()


def test_lookups_asked_while_calls_wait_on_an_empty_answer_are_spaced_out(dns: tuple[Zone, str]) -> None:
    # every wait of a waiting start() or call asks discovery again: the resolver must not turn that into
    # five lookups a second for as long as the record is missing, and must still find it when it appears
    zone, server = dns
    zone.set(f"other.{ZONE}", "A", [A("127.0.0.9")])
    rep = Replica("127.0.0.1:0")
    asked: list[int] = []

    def publish() -> None:
        asked.append(zone.queries)
        zone.set(f"kv.{ZONE}", "A", [A("127.0.0.1")])

    try:
        cfg = RemoteConfig(target=f"dns:///kv.plugbay.test:{rep.port}", handshake=HANDSHAKE, plugins=PLUGINS,
                           insecure=True, dns_server=server, allow_loopback=True, start_timeout=20.0,
                           name="kv-dns-spaced")
        client = RemoteClient(cfg)
        later = threading.Timer(4.0, publish)
        later.start()
        try:
            client.start()
            assert client.dispense(PLUGIN_NAME).get("__pid__") == str(rep.proc.pid).encode()
        finally:
            later.join(10)
            client.kill()
    finally:
        rep.stop()
    # A and AAAA per lookup: the first, then ones 0.2, 0.4, 0.8, 1.6 and 2 s apart (at 0.2 s apart: 40 queries)
    assert asked and 2 <= asked[0] <= 14, asked
