"""An answer too large for a UDP datagram comes truncated (the TC flag) and is asked again over TCP.

A real DNS server (dnslib) on 127.0.0.1 that keeps to 512-byte UDP answers, as RFC 1035 servers do:
a name with a hundred addresses is answered truncated over UDP. Served over UDP only, the lookup's error said, in
the DNS library's words, "Server ... answered ; Server ... answered [Errno 111] Connection refused" and
"Check that the DNS server is reachable" of a server that had just answered: now it says the answer was
truncated and that the server must serve TCP too (or answer with fewer records).
"""

from __future__ import annotations

import pytest
from dnslib import A

from plugbay import DiscoveryError
from plugbay.network.resolvers import DNSResolver
from tests.dns_util import ZONE, Zone, serving

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
    assert f"many.{ZONE} A: the answer was too large for UDP (truncated) and the query over TCP that must" \
           " follow failed ([Errno 111] Connection refused): the DNS server must also serve TCP on its port" in text
    assert f"at {server} failed" in text  # which server, as before
    assert "answered ;" not in text  # the library's words for the truncated answer, which said nothing
