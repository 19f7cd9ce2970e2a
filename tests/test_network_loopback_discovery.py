"""Loopback addresses from discovery are refused unless asked for: a spoofed DNS answer or EndpointSlice must not
aim health checks and calls (carrying the host's client certificate) at this host's own services.

A real DNS server (dnslib) on 127.0.0.1 answering 127.0.0.x, and the loopback stand-in of the Kubernetes API's
EndpointSlice list and watch. static:/// targets are the user's own word and take loopback addresses as ever."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from dnslib import SRV, A

from plugbay import DiscoveryError, RemoteClient, RemoteConfig
from plugbay.network.kubernetes import EndpointSliceResolver
from plugbay.network.resolver import Endpoint
from plugbay.network.resolvers import DNSResolver
from plugbay.network.targets import make_resolver, parse_target
from tests.cli_util import plugbay
from tests.dns_util import ZONE, Zone, serving
from tests.net_util import HANDSHAKE, PLUGINS
from tests.resilience_util import wait_until
from tests.slice_api import EndpointSets, SliceAPI, api, slice_of  # noqa: F401  (api is a fixture)

HINT = "pass allow_loopback=True"


@pytest.fixture()
def dns() -> Iterator[tuple[Zone, str]]:
    zone = Zone()
    with serving(zone) as address:
        yield zone, address


def test_a_dns_answer_of_loopback_addresses_is_refused_by_default_and_taken_with_the_opt_in(
        dns: tuple[Zone, str], caplog: pytest.LogCaptureFixture) -> None:
    zone, server = dns
    zone.set(f"kv.{ZONE}", "A", [A("127.0.0.5"), A("127.0.0.6")])
    caplog.set_level(logging.WARNING, logger="plugbay.network")
    refused = DNSResolver("kv.plugbay.test", 7001, dns_server=server, timeout=1.0)
    with pytest.raises(DiscoveryError) as err:
        refused.start(lambda eps: None)
    assert "127.0.0.5, 127.0.0.6: all refused" in str(err.value) and HINT in str(err.value)
    assert caplog.text.count("names 127.0.0.5, which is a loopback address") == 1
    # the same through a RemoteClient: a typed error at start, not a wait for endpoints that never come
    with pytest.raises(DiscoveryError, match="allow_loopback=True"):
        RemoteClient(RemoteConfig(target="dns:///kv.plugbay.test:7001", handshake=HANDSHAKE, plugins=PLUGINS,
                                  insecure=True, dns_server=server, start_timeout=5.0, name="kv-loop")).start()

    allowed = DNSResolver("kv.plugbay.test", 7001, dns_server=server, timeout=1.0, allow_loopback=True)
    sets: list[list[Endpoint]] = []
    allowed.start(lambda eps: sets.append(list(eps)))
    allowed.close()
    assert [e.key for e in sets[0]] == ["tcp:127.0.0.5:7001", "tcp:127.0.0.6:7001"]


def test_loopback_among_other_answers_is_skipped_with_one_warning(dns: tuple[Zone, str],
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    from dnslib import AAAA

    zone, server = dns
    zone.set(f"kv.{ZONE}", "A", [A("127.0.0.7"), A("10.9.0.1")])
    zone.set(f"kv.{ZONE}", "AAAA", [AAAA("::1"), AAAA("::ffff:7f00:8")])
    zone.set(f"_kv._tcp.kv.{ZONE}", "SRV", [SRV(0, 0, 7002, f"kv.{ZONE}"), SRV(1, 0, 7002, "127.0.0.9")])
    caplog.set_level(logging.WARNING, logger="plugbay.network")
    resolver = DNSResolver("kv.plugbay.test", 7001, dns_server=server, timeout=1.0, refresh=0.1)
    sets: list[list[Endpoint]] = []
    resolver.start(lambda eps: sets.append(list(eps)))
    try:
        assert wait_until(lambda: resolver.lookups >= 3, 10)
    finally:
        resolver.close()
    assert [e.key for e in sets[0]] == ["tcp:10.9.0.1:7001"]
    for address in ("127.0.0.7", "::1"):
        assert caplog.text.count(f"names {address}, which is a loopback address") == 1, address  # not per lookup
    # IPv4 loopback mapped into IPv6 (dialled as the IPv4 address), in either spelling
    assert caplog.text.count("names ::ffff:127.0.0.8, which is a loopback") + caplog.text.count(
        "names ::ffff:7f00:8, which is a loopback") == 1
    assert HINT in caplog.text
    srv = DNSResolver("_kv._tcp.kv.plugbay.test", srv=True, dns_server=server, timeout=1.0)
    found: list[list[Endpoint]] = []
    srv.start(lambda eps: found.append(list(eps)))
    srv.close()
    assert [e.key for e in found[0]] == ["tcp:10.9.0.1:7002"]


def test_static_targets_keep_taking_loopback_and_the_targets_pass_the_opt_in() -> None:
    static = make_resolver(parse_target("static:///127.0.0.1:7001"))
    got: list[Sequence[Endpoint]] = []
    static.start(got.append)
    assert [e.key for e in got[0]] == ["tcp:127.0.0.1:7001"]
    assert make_resolver(parse_target("dns:///kv:1"), dns_server="10.0.0.2").allow_loopback is False  # type: ignore[attr-defined]
    assert make_resolver(parse_target("dns:///kv:1"), dns_server="10.0.0.2",
                         allow_loopback=True).allow_loopback is True  # type: ignore[attr-defined]
    kube = make_resolver(parse_target("kubernetes:///default/kv:7001"), allow_loopback=True)
    assert kube.allow_loopback is True  # type: ignore[attr-defined]


def test_the_cli_refuses_a_loopback_answer_unless_told(dns: tuple[Zone, str]) -> None:
    zone, server = dns
    zone.set(f"kv.{ZONE}", "A", [A("127.0.0.5")])
    target = f"dns://{server}/kv.plugbay.test:1"  # nothing listens on port 1: the health check is UNREACHABLE
    refused = plugbay("health", target, "--insecure", "--timeout", "0.5", timeout=60)
    assert refused.returncode != 0 and "--allow-loopback" in refused.stderr, (refused.stdout, refused.stderr)
    taken = plugbay("health", target, "--insecure", "--timeout", "0.5", "--allow-loopback", timeout=60)
    assert "allow-loopback" not in taken.stderr and "UNREACHABLE" in taken.stdout + taken.stderr, \
        (taken.stdout, taken.stderr)


def test_an_endpointslice_of_loopback_addresses_is_refused_by_default(api: SliceAPI, tmp_path: Path,  # noqa: F811
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    api.list_body["items"] = [slice_of("kv-a", ["127.0.0.5", "127.0.0.6"], port=7001)]
    caplog.set_level(logging.WARNING, logger="plugbay.network.kubernetes")
    refused = EndpointSliceResolver("default", "kv", "grpc", kubeconfig=api.kubeconfig(tmp_path / "kc"))
    with pytest.raises(DiscoveryError) as err:
        refused.start(lambda eps: None)
    refused.close()
    assert "127.0.0.5, 127.0.0.6: all refused" in str(err.value) and HINT in str(err.value)
    assert caplog.text.count("an EndpointSlice names 127.0.0.5, which is a loopback address") == 1

    on_change = EndpointSets()
    sets = on_change.sets

    allowed = EndpointSliceResolver("default", "kv", "grpc", allow_loopback=True,
                                    kubeconfig=api.kubeconfig(tmp_path / "kc2"))
    allowed.start(on_change)
    allowed.close()
    assert [e.key for e in sets[0]] == ["tcp:127.0.0.5:7001", "tcp:127.0.0.6:7001"]


def test_a_watch_event_adding_a_loopback_address_is_skipped_once(api: SliceAPI, tmp_path: Path,  # noqa: F811
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    api.list_body["items"] = [slice_of("kv-a", ["10.1.0.1"], port=7001)]
    caplog.set_level(logging.WARNING, logger="plugbay.network.kubernetes")
    on_change = EndpointSets()
    sets = on_change.sets

    resolver = EndpointSliceResolver("default", "kv", "grpc", kubeconfig=api.kubeconfig(tmp_path / "kc"))
    resolver.start(on_change)
    try:
        assert wait_until(lambda: api.watches >= 1, 10)
        for n in range(3):  # the same hostile slice, changed thrice: one warning
            grown = slice_of("kv-b", ["127.0.0.1", f"10.1.0.{n + 2}"], port=7001)
            grown["metadata"]["resourceVersion"] = str(n + 2)
            api.events.put({"type": "ADDED" if n == 0 else "MODIFIED", "object": grown})
        assert wait_until(lambda: len(sets) >= 4, 10), sets
    finally:
        resolver.close()
    assert [e.key for e in sets[-1]] == ["tcp:10.1.0.1:7001", "tcp:10.1.0.4:7001"]
    assert caplog.text.count("an EndpointSlice names 127.0.0.1, which is a loopback address") == 1
