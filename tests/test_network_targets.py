"""The target syntax: every scheme parsed, every malformed part named in a ConfigError that shows the syntax."""

from __future__ import annotations

import pytest

from plugbay import ConfigError
from plugbay.network.resolver import Endpoint
from plugbay.network.resolvers import parse_dns_server
from plugbay.network.static import StaticResolver
from plugbay.network.targets import SYNTAX, make_resolver, parse_target


def test_static_targets_list_their_endpoints_with_ipv6_in_brackets() -> None:
    t = parse_target("static:///10.0.0.5:7001,[fd00::6]:7002,kv-a.internal:7003")
    assert t.scheme == "static"
    assert [e.address for e in t.endpoints] == ["10.0.0.5:7001", "[fd00::6]:7002", "kv-a.internal:7003"]
    assert all(e.network == "tcp" for e in t.endpoints)
    assert len(parse_target("static:///10.0.0.5:7001,10.0.0.5:7001").endpoints) == 1  # duplicates merged
    # one IPv6 address in two spellings is one endpoint, in the first spelling's place
    t = parse_target("static:///[0::1]:7001,10.0.0.5:7001,[::1]:7001")
    assert [e.address for e in t.endpoints] == ["[::1]:7001", "10.0.0.5:7001"]


def test_a_static_list_longer_than_the_endpoint_cap_is_refused() -> None:
    # each endpoint costs a channel and a health check per interval; DNS and EndpointSlices keep 256
    from plugbay.network.resolver import MAX_ENDPOINTS

    hosts = [f"127.0.{i // 250}.{i % 250 + 1}:7000" for i in range(MAX_ENDPOINTS + 1)]
    assert len(parse_target("static:///" + ",".join(hosts[:-1])).endpoints) == MAX_ENDPOINTS
    with pytest.raises(ConfigError, match=f"has {MAX_ENDPOINTS + 1} endpoints, over the {MAX_ENDPOINTS}"):
        parse_target("static:///" + ",".join(hosts))
    # repeats count once
    assert len(parse_target("static:///" + ",".join(hosts[:-1] + hosts[:5])).endpoints) == MAX_ENDPOINTS


def test_dns_srv_kubernetes_and_unix_targets() -> None:
    dns = parse_target("dns:///kv.example.internal:7001")
    assert (dns.scheme, dns.host, dns.port) == ("dns", "kv.example.internal", 7001)
    srv = parse_target("dns+srv:///_kv._tcp.example.internal")
    assert (srv.scheme, srv.host) == ("dns+srv", "_kv._tcp.example.internal")
    kube = parse_target("kubernetes:///plugins/kv:grpc")
    assert (kube.namespace, kube.service, kube.port_name) == ("plugins", "kv", "grpc")
    assert parse_target("kubernetes:///plugins/kv:7001").port_name == "7001"
    unix = parse_target("unix:///run/plugbay/kv.sock")
    assert unix.endpoints == (Endpoint("unix", "/run/plugbay/kv.sock", name="/run/plugbay/kv.sock"),)


def test_dns_targets_may_name_their_dns_server_as_grpc_does() -> None:
    # gRPC's dns://AUTHORITY/NAME: the authority is the DNS server to ask
    assert parse_target("dns:///kv.example.internal:7001").dns_server == ""
    dns = parse_target("dns://10.0.0.2:5353/kv.example.internal:7001")
    assert (dns.host, dns.port, dns.dns_server) == ("kv.example.internal", 7001, "10.0.0.2:5353")
    srv = parse_target("dns+srv://[fd00::53]/_kv._tcp.example.internal")
    assert (srv.host, srv.dns_server) == ("_kv._tcp.example.internal", "[fd00::53]")
    resolver = make_resolver(dns)
    assert resolver.dns_server == "10.0.0.2:5353"  # type: ignore[attr-defined]
    assert make_resolver(dns, dns_server="10.0.0.2:5353").dns_server == "10.0.0.2:5353"  # type: ignore[attr-defined]
    assert make_resolver(parse_target("dns:///kv:1"), dns_server="10.0.0.3").dns_server == "10.0.0.3"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="asks DNS server 10.0.0.2:5353 and dns_server says 10.0.0.3"):
        make_resolver(dns, dns_server="10.0.0.3")


@pytest.mark.parametrize("text, named", [
    ("", "a target is required"),
    ("10.0.0.5:7001", "the start is not SCHEME:///"),
    ("dns://kv.example.internal:7001", "is neither dns:///NAME:PORT nor dns://DNS_IP[:PORT]/NAME:PORT"),
    ("dns://ns.example.internal/kv:7001", "DNS server 'ns.example.internal' is not DNS_IP"),
    ("dns://10.0.0.2:0/kv:7001", "DNS server '10.0.0.2:0' is not DNS_IP"),
    ("dns+srv://[::1]x/_kv._tcp.example.internal", "DNS server '[::1]x' is not DNS_IP"),
    ("static://10.0.0.2/10.0.0.5:7001", "the start is not SCHEME:///"),
    ("http:///10.0.0.5:7001", "scheme 'http' is unknown"),
    ("static:///", "the part after :/// is empty"),
    ("static:///10.0.0.5", "'10.0.0.5' lacks the :PORT"),
    ("static:///:7000", "':7000' lacks the HOST before :PORT"),
    ("static:///127.0.0.1:7000,:7001", "':7001' lacks the HOST before :PORT"),
    ("static:///10.0.0.5:70000", "has port '70000'"),
    ("static:///10.0.0.5:7001,,10.0.0.6:7001", "has an empty entry"),
    ("static:///fd00::5:7001", "write it in brackets"),
    ("static:///[10.0.0.5]:7001", "which is not an IPv6 address"),
    ("static:///[fd00::5]7001", "is not [IPV6]:PORT"),
    ("static:///bad_host!:7001", "neither an address nor a DNS name"),
    ("dns:///kv.example.internal", "lacks the :PORT"),
    ("dns:///:80", "':80' lacks the HOST before :PORT"),
    ("dns:///kv.example.internal:http", "has port 'http'"),
    ("dns+srv:///_kv._tcp.example.internal:53", "an SRV record carries the port itself"),
    ("kubernetes:///plugins", "is not NAMESPACE/SERVICE:PORT"),
    ("kubernetes:///Plugins/kv:7001", "namespace 'Plugins' is not a Kubernetes name"),
    ("kubernetes:///plugins/kv", "lacks the :PORT"),
    ("kubernetes:///plugins/kv:Grpc_Port", "port 'Grpc_Port' is neither a number nor a port name"),
    # str.isdigit() takes these, int() does not: a bare ValueError before
    ("static:///127.0.0.1:\u00b2", "has port '\u00b2'"),
    ("dns://127.0.0.1:\u00b2/kv:7001", "DNS server '127.0.0.1:\u00b2' is not DNS_IP"),
    ("kubernetes:///plugins/kv:\u00b3", "is neither a number nor a port name"),
    # a "$" in a pattern also matched before a final newline: a name with "\n" was looked up or dialed
    ("static:///kv\n:7001", "neither an address nor a DNS name"),
    ("dns+srv:///_kv\n._tcp.example.internal", "is not a DNS name"),
    ("kubernetes:///plugins\n/kv:7001", "is not a Kubernetes name"),
])
def test_bad_targets_name_the_bad_part_and_show_the_syntax(text: str, named: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_target(text)
    assert named in str(err.value)
    assert SYNTAX in str(err.value)


@pytest.mark.parametrize("text, hint", [
    ("static://127.0.0.1:7001", "; write 'static:///127.0.0.1:7001'"),
    ("unix://run/kv.sock", "; write 'unix:///run/kv.sock'"),
    ("127.0.0.1:7001,127.0.0.2:7001", "; it names no scheme: for fixed endpoints write"
                                      " 'static:///127.0.0.1:7001,127.0.0.2:7001'"),
    ("/run/kv.sock", "; for a unix socket write 'unix:///run/kv.sock'"),
    ("https://10.0.0.5:7001", "; 'https' is no scheme of a target (use one of static, dns, dns+srv,"
                              " kubernetes, unix)"),
    ("tcp://10.0.0.5:7001", "; 'tcp' is no scheme of a target"),
])
def test_a_target_without_three_slashes_says_what_was_likely_meant(text: str, hint: str) -> None:
    # a first try's "static://HOST:PORT", bare "HOST:PORT" or a URL was told only that three slashes were missing
    with pytest.raises(ConfigError) as err:
        parse_target(text)
    assert f"the start is not SCHEME:///... (three slashes){hint}" in str(err.value)


def test_a_unix_target_with_extra_slashes_names_the_same_socket() -> None:
    assert [e.address for e in parse_target("unix:////tmp/kv.sock").endpoints] == ["/tmp/kv.sock"]


def test_dns_server_option_is_checked() -> None:
    assert parse_dns_server("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_dns_server("[::1]:53") == ("::1", 53)
    assert parse_dns_server("10.0.0.1") == ("10.0.0.1", 53)
    with pytest.raises(ConfigError, match="is not IP or IP:PORT"):
        parse_dns_server("dns.example:53")
    with pytest.raises(ConfigError, match="a port is a number"):
        parse_dns_server("127.0.0.1:0")
    with pytest.raises(ConfigError, match="a port is a number"):
        parse_dns_server("[::1]53")
    with pytest.raises(ConfigError, match="a port is a number"):
        parse_dns_server("127.0.0.1:\u00b2")


def test_static_resolver_reports_its_set_before_start_returns() -> None:
    seen: list[list[str]] = []
    resolver = make_resolver(parse_target("static:///127.0.0.1:1,127.0.0.1:2"))
    assert isinstance(resolver, StaticResolver)
    resolver.start(lambda eps: seen.append([e.address for e in eps]))
    resolver.close()
    assert seen == [["127.0.0.1:1", "127.0.0.1:2"]]


def test_kubernetes_parts_without_the_kubernetes_client_say_how_to_get_it() -> None:
    # the client is an extra: without it a kubernetes:/// target, the pod runner and its sweep
    # each say to install it (they raised a bare ModuleNotFoundError, the target only at start())
    code = (
        "import sys; sys.modules['kubernetes'] = None\n"  # as if the kubernetes client were not installed
        "from plugbay.network.targets import make_resolver, parse_target\n"
        "from plugbay.runners.kubernetes import KubernetesRunner, sweep\n"
        "for make in (lambda: make_resolver(parse_target('kubernetes:///plugins/kv:7001')),\n"
        "             lambda: KubernetesRunner('img'), lambda: sweep('default', dry_run=True)):\n"
        "    try:\n"
        "        make()\n"
        "    except Exception as exc:\n"
        "        print(type(exc).__name__, exc)\n"
    )
    target, runner, swept = _without(code).splitlines()
    assert target.startswith("ConfigError target 'kubernetes:///plugins/kv:7001' needs Kubernetes discovery")
    assert "pip install 'plugbay[kubernetes]'" in target and "use a static:/// or dns:/// target" in target
    for line in (runner, swept):
        assert line == "EngineUnavailableError the Kubernetes client is missing: pip install 'plugbay[kubernetes]'"


def test_static_targets_need_no_dns_library_and_dns_targets_say_how_to_get_one() -> None:
    code = (
        "import sys; sys.modules['dns'] = None\n"  # as if dnspython were not installed
        "from plugbay.network.targets import make_resolver, parse_target\n"
        "make_resolver(parse_target('static:///127.0.0.1:7001'))\n"
        "try:\n"
        "    make_resolver(parse_target('dns:///kv.example.internal:7001'))\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = _without(code)
    assert out.startswith("ConfigError target 'dns:///kv.example.internal:7001' needs DNS lookups")
    assert "pip install 'plugbay[network]'" in out


def _without(code: str) -> str:
    """What ``code`` prints in a fresh interpreter (which hides an extra from itself first)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout
