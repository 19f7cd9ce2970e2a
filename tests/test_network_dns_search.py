"""A short name (a Kubernetes Service's "kv-plugin") is looked up with the system's search list, as
gRPC's and Go's resolvers look it up; a name ending in "." and a DNS server named by the user are not.

The "system" is a resolv.conf written in tmp_path naming the real DNS server (dnslib) on 127.0.0.1;
no query leaves loopback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dnslib import A

from tests.dns_util import Zone, serving

from plugbay.network import resolvers
from plugbay.network.resolvers import DNSResolver


def _system_resolver(name: str, conf: Path, port: int) -> DNSResolver:
    resolver = DNSResolver(name, 7001, timeout=2.0, allow_loopback=True)
    # the file was read, not the host's own: before any query, so none goes elsewhere
    assert resolver._resolver.nameservers == ["127.0.0.1"], "the resolver did not read " + str(conf)
    resolver._resolver.port = port  # resolv.conf has no port: the test server's stands for 53
    return resolver


def test_a_short_name_is_searched_and_an_absolute_or_server_given_one_is_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zone = Zone()
    zone.set("kv-plugin.plugins.svc.cluster.local.", "A", [A("127.0.0.7")])
    zone.set("kv-plugin.", "A", [A("127.0.0.8")])
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.1\nsearch plugins.svc.cluster.local svc.cluster.local cluster.local\n"
                    "options ndots:5\n")
    monkeypatch.setattr(resolvers, "_RESOLV_CONF", str(conf), raising=False)
    with serving(zone) as server:
        port = int(server.rpartition(":")[2])
        # fewer dots than ndots: the search list first, as the pod's own resolver would
        assert [e.address for e in _system_resolver("kv-plugin", conf, port).resolve()] == ["127.0.0.7:7001"]
        assert [e.address for e in _system_resolver("kv-plugin.", conf, port).resolve()] == ["127.0.0.8:7001"]
        named = DNSResolver("kv-plugin", 7001, dns_server=server, allow_loopback=True, timeout=2.0)
        assert [e.address for e in named.resolve()] == ["127.0.0.8:7001"]
