"""An answer too large for a UDP datagram comes truncated (the TC flag) and is asked again over TCP.

A real DNS server (dnslib) on 127.0.0.1 that keeps to 512-byte UDP answers, as RFC 1035 servers do:
a name with a hundred addresses is answered truncated over UDP. Served over UDP only, the lookup's error said, in
the DNS library's words, "Server ... answered ; Server ... answered [Errno 111] Connection refused" and
"Check that the DNS server is reachable" of a server that had just answered: now it says the answer was
truncated and that the server must serve TCP too (or answer with fewer records), without the advice to check
that it is reachable. Each server is named with what happened there: a TCP query answered SERVFAIL is no
missing TCP, and with two servers the second's errors and the lookup's time running out are kept. A TCP query
the lookup's time left no room for (or cut short) advises more time, not TCP; any OSError on it (no route)
means TCP was not reached.
"""

from __future__ import annotations

import errno
from pathlib import Path

import dns.exception
import dns.message
import dns.nameserver
import dns.resolver
import pytest
from dnslib import RCODE, A

from plugbay import DiscoveryError
from plugbay.network import resolvers
from plugbay.network.dns_failures import failure_text
from plugbay.network.resolvers import DNSResolver
from tests.dns_util import ZONE, Zone, serving, silent_server

ADDRESSES = [f"10.0.{i // 256}.{i % 256}" for i in range(1, 101)]  # about 1.6 kB of answer


def _zone() -> Zone:
    zone = Zone()
    zone.set(f"many.{ZONE}", "A", [A(a) for a in ADDRESSES])
    return zone


def test_a_truncated_answer_from_a_server_without_tcp_says_so() -> None:
    with serving(_zone(), udplen=512) as server:
        resolver = DNSResolver(f"many.{ZONE}", 7001, dns_server=server, timeout=2.0)
        with pytest.raises(DiscoveryError) as err:
            resolver.resolve()
    text = str(err.value)
    assert f"many.{ZONE} A: {server}: answered too large for UDP (truncated), and the query over TCP that must" \
           " follow failed ([Errno 111] Connection refused): that server must also serve TCP on its port" in text
    assert f"at {server} failed" in text  # which server, as before
    assert "answered ;" not in text  # the library's words for the truncated answer, which said nothing
    assert "reachable" not in text  # it answered: "check that the DNS server is reachable" misleads


def test_a_truncated_answer_whose_tcp_query_is_answered_servfail_does_not_blame_tcp() -> None:
    # the server serves TCP: the query over TCP reached it and failed there
    with serving(_zone(), udplen=512, tcp_rcode=RCODE.SERVFAIL) as server:
        resolver = DNSResolver(f"many.{ZONE}", 7001, dns_server=server, timeout=2.0)
        with pytest.raises(DiscoveryError) as err:
            resolver.resolve()
    text = str(err.value)
    assert f"many.{ZONE} A: {server}: answered too large for UDP (truncated), and over TCP answered SERVFAIL" in text
    assert "serve TCP" not in text
    assert "reachable" not in text


def test_two_servers_each_say_what_happened_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the system's configuration with two nameservers: the first truncates and serves no TCP, the second
    # never answers, and the lookup's time runs out on it
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.1\n")
    monkeypatch.setattr(resolvers, "_RESOLV_CONF", str(conf))
    with serving(_zone(), udplen=512) as first, silent_server() as second:
        resolver = DNSResolver(f"many.{ZONE}", 7001, timeout=1.0)
        # resolv.conf names no port: the test's servers listen on free ones
        resolver._resolver.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", int(s.rsplit(":", 1)[1]))
                                          for s in (first, second)]
        with pytest.raises(DiscoveryError) as err:
            resolver.resolve()
    text = str(err.value)
    assert f"many.{ZONE} A: {first}: answered too large for UDP (truncated), and the query over TCP that must" \
           " follow failed ([Errno 111] Connection refused): that server must also serve TCP on its port" in text
    assert f"; {second}: The DNS operation timed out;" in text  # the second server's error is kept
    assert "the lookup's time ran out after" in text
    assert "the DNS server must" not in text  # no server is "the" one: each is named
    # the second server did not answer: checking that the servers are reachable is the advice there
    assert "Check that the DNS servers of /etc/resolv.conf are reachable" in text


# The errors dnspython 2.9.2 keeps per query (Resolution.query_result): (nameserver, over TCP, port, error,
# response). Built here: when the lookup's time runs out between a truncated answer and its TCP query, or
# a route is missing, no live server on 127.0.0.1 does it on cue.
NS = str(dns.nameserver.Do53Nameserver("127.0.0.1", 5353))


def _truncated_then(tcp_error: Exception | None) -> list[tuple[object, ...]]:
    errors: list[tuple[object, ...]] = [(NS, False, 5353, dns.message.Truncated(), None)]
    return errors + ([(NS, True, 5353, tcp_error, None)] if tcp_error is not None else [])


def _no_nameservers(errors: list[tuple[object, ...]]) -> Exception:
    return dns.resolver.NoNameservers(request=dns.message.make_query("many.test.", "A"), errors=errors)


def test_a_tcp_query_the_lookups_time_left_no_room_for_says_what_to_do() -> None:
    timed_out = dns.resolver.LifetimeTimeout(timeout=1.0, errors=_truncated_then(None))
    text, advised = failure_text("many.test", "A", timed_out)
    assert "127.0.0.1:5353: answered too large for UDP (truncated), and the query over TCP that must follow was not" \
           " made: give the lookup more time (DNSResolver's timeout; start_timeout while discovery starts), or have" \
           " that server answer within a UDP datagram (fewer records)" in text
    assert advised
    # a TCP query the lookup's time cut short met no sign that TCP is not served
    text, advised = failure_text("many.test", "A", dns.resolver.LifetimeTimeout(
        timeout=1.0, errors=_truncated_then(dns.exception.Timeout(timeout=0.3))))
    assert "the query over TCP that must follow was cut short when the lookup's time ran out: give the lookup" \
           " more time" in text
    assert "serve TCP" not in text
    assert text.endswith("; the lookup's time ran out after 1.0 s")
    assert advised


def test_a_tcp_query_that_reached_no_tcp_service_says_serve_tcp() -> None:
    no_route = OSError(errno.EHOSTUNREACH, "No route to host")
    text, advised = failure_text("many.test", "A", _no_nameservers(_truncated_then(no_route)))
    assert "127.0.0.1:5353: answered too large for UDP (truncated), and the query over TCP that must follow failed" \
           " ([Errno 113] No route to host): that server must also serve TCP on its port" in text
    assert advised
    # a TCP query that timed out on its own (another query came after it) met no TCP service either
    errors = _truncated_then(dns.exception.Timeout(timeout=2.0)) + [(NS, False, 5353, dns.message.Truncated(), None)]
    text, _ = failure_text("many.test", "A", dns.resolver.LifetimeTimeout(timeout=4.0, errors=errors))
    assert "failed (The DNS operation timed out after 2.000 seconds): that server must also serve TCP" in text


def test_an_error_over_tcp_reads_as_one_sentence() -> None:
    text, advised = failure_text("many.test", "A", _no_nameservers(_truncated_then(dns.message.Truncated())))
    assert "and over TCP the truncated flag is set: check that it serves that name over TCP too" in text
    assert advised
