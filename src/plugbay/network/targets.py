"""The one target syntax of network mode (API, CLI and Helm chart alike), and the resolver each names.

==========================================================  ===========================================
``static:///10.0.0.5:7001,[fd00::5]:7001``                  fixed endpoints (IPv6 hosts in brackets)
``dns:///kv.example.internal:7001``                          A/AAAA records, port given; re-resolved
                                                             periodically and when calls fail
``dns+srv:///_kv._tcp.example.internal``                     SRV records (they carry host and port)
``dns://10.0.0.2:53/kv.example.internal:7001``               the same, asking that DNS server (gRPC's
                                                             ``dns://AUTHORITY/`` form; also dns+srv)
``kubernetes:///NAMESPACE/SERVICE:PORT``                     the Service's EndpointSlices (PORT: number
                                                             or port name)
``unix:///run/plugbay/kv.sock``                              a sidecar's unix socket
==========================================================  ===========================================

A target is parsed once, up front: every malformed part is a ConfigError that
names the part and shows this syntax.
"""

from __future__ import annotations

import importlib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from plugbay.errors import ConfigError
from plugbay.network.resolver import MAX_ENDPOINTS, Endpoint, Resolver, parse_dns_server

SYNTAX = ("static:///HOST:PORT[,HOST:PORT...] (IPv6 as [ADDR]:PORT), dns://[DNS_IP[:PORT]]/NAME:PORT,"
          " dns+srv://[DNS_IP[:PORT]]/_SERVICE._PROTO.NAME, kubernetes:///NAMESPACE/SERVICE:PORT or unix:///PATH")
SCHEMES = ("static", "dns", "dns+srv", "kubernetes", "unix")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?\Z")


@dataclass(frozen=True)
class Target:
    """A parsed target. Which fields are set depends on ``scheme``."""

    scheme: str
    text: str
    endpoints: tuple[Endpoint, ...] = ()  # static, unix
    host: str = ""  # dns: the name; dns+srv: the SRV name
    port: int = 0  # dns
    namespace: str = ""  # kubernetes
    service: str = ""  # kubernetes
    port_name: str = ""  # kubernetes: the port, as given (number or name)
    dns_server: str = ""  # dns, dns+srv: the DNS server the target names (dns://IP[:PORT]/...), as given


def _bad(text: str, part: str, why: str) -> ConfigError:
    return ConfigError(f"bad target {text!r}: {part} {why}. A target is one of: {SYNTAX}")


def parse_port(text: str, part: str, value: str) -> int:
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= 65535:
        raise _bad(text, part, f"has port {value!r}; a port is a number from 1 to 65535")
    return int(value)


def valid_hostname(name: str) -> bool:
    name = name[:-1] if name.endswith(".") else name
    return 0 < len(name) <= 253 and all(_LABEL.match(label) for label in name.split("."))


def split_host_port(text: str, part: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` -> (host without brackets, port)."""
    if part.startswith("["):
        close = part.find("]")
        if close < 0 or part[close + 1:close + 2] != ":":
            raise _bad(text, repr(part), "is not [IPV6]:PORT")
        host, port = part[1:close], part[close + 2:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _bad(text, repr(part), f"has {host!r} in brackets, which is not an IPv6 address") from None
        return host, parse_port(text, repr(part), port)
    host, sep, port = part.rpartition(":")
    if not sep:
        raise _bad(text, repr(part), "lacks the :PORT (HOST:PORT)")
    if not host:
        raise _bad(text, repr(part), "lacks the HOST before :PORT (HOST:PORT, e.g. 127.0.0.1:7000)")
    if ":" in host:
        raise _bad(text, repr(part), "looks like an IPv6 address; write it in brackets: [ADDR]:PORT")
    if not valid_hostname(host):
        raise _bad(text, repr(part), f"has host {host!r}, which is neither an address nor a DNS name")
    return host, parse_port(text, repr(part), port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _start_hint(text: str) -> str:
    """What a target without SCHEME:/// was most likely meant to be: a first try's 'static://HOST:PORT',
    a bare HOST:PORT, a socket path or a URL's scheme were told only that three slashes were missing."""
    scheme, sep, rest = text.partition("://")
    if sep and scheme in SCHEMES:
        meant = f"{scheme}:///{rest.lstrip('/')}"
        try:
            parse_target(meant)
        except ConfigError:
            return ""
        return f"; write {meant!r}"
    if sep:
        return f"; {scheme!r} is no scheme of a target (use one of {', '.join(SCHEMES)})"
    if text.startswith("/"):
        return f"; for a unix socket write {'unix://' + text!r}"
    try:
        for part in text.split(","):
            split_host_port(text, part)
    except ConfigError:
        return ""
    return f"; it names no scheme: for fixed endpoints write {'static:///' + text!r}"


def parse_target(text: str) -> Target:
    """Parse a target string; a ConfigError names what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"a target is required (got {text!r}). A target is one of: {SYNTAX}")
    text = text.strip()
    scheme, sep, rest = text.partition(":///")
    server = ""
    if not sep:
        scheme, sep, rest = text.partition("://")
        if sep and scheme in ("dns", "dns+srv"):  # gRPC's dns://AUTHORITY/NAME: AUTHORITY is the DNS server
            server, slash, rest = rest.partition("/")
            if not slash:
                raise _bad(text, "the start", "is neither dns:///NAME:PORT nor dns://DNS_IP[:PORT]/NAME:PORT")
            try:
                parse_dns_server(server)
            except ConfigError:
                raise _bad(text, f"DNS server {server!r}", "is not DNS_IP or DNS_IP:PORT (an address, not a name;"
                           " IPv6 as [ADDR]:PORT)") from None
        else:
            raise _bad(text, "the start", "is not SCHEME:///... (three slashes)" + _start_hint(text))
    if scheme not in SCHEMES:
        raise _bad(text, f"scheme {scheme!r}", f"is unknown; use one of {', '.join(SCHEMES)}")
    if not rest:
        raise _bad(text, "the part after :///", "is empty")
    if scheme == "static":
        parts = rest.split(",")
        if any(not p for p in parts):
            raise _bad(text, "the endpoint list", "has an empty entry (a stray comma?)")
        eps: dict[str, Endpoint] = {}
        for part in parts:
            host, port = split_host_port(text, part)
            if ":" in host:  # one spelling per IPv6 address: [0::1] and [::1] are one endpoint
                host = str(ipaddress.IPv6Address(host))
            ep = Endpoint("tcp", join_host_port(host, port), name=part)
            eps.setdefault(ep.key, ep)
        if len(eps) > MAX_ENDPOINTS:  # what the other resolvers keep: each costs a channel and health checks
            raise _bad(text, "the endpoint list", f"has {len(eps)} endpoints, over the {MAX_ENDPOINTS} a target may"
                       " have; split the replicas across hosts, or name them with a dns:/// or kubernetes:/// target")
        return Target(scheme, text, endpoints=tuple(eps.values()))
    if scheme == "unix":
        path = "/" + rest.lstrip("/")  # unix:////tmp/kv.sock: the same file to Linux
        if "\0" in path:
            raise _bad(text, "the socket path", "contains a NUL byte")
        return Target(scheme, text, endpoints=(Endpoint("unix", path, name=path),))
    if scheme == "dns":
        host, port = split_host_port(text, rest)
        return Target(scheme, text, host=host, port=port, dns_server=server)
    if scheme == "dns+srv":
        if ":" in rest:
            raise _bad(text, repr(rest), "has a port; an SRV record carries the port itself")
        if not valid_hostname(rest):
            raise _bad(text, repr(rest), "is not a DNS name like _kv._tcp.example.internal")
        return Target(scheme, text, host=rest, dns_server=server)
    namespace, slash, svc = rest.partition("/")
    if not slash:
        raise _bad(text, repr(rest), "is not NAMESPACE/SERVICE:PORT")
    service, colon, port_name = svc.partition(":")
    for what, value in (("namespace", namespace), ("service", service)):
        if not _K8S_NAME.match(value):
            raise _bad(text, f"{what} {value!r}", "is not a Kubernetes name (lower case a-z, 0-9, '-')")
    if not colon or not port_name:
        raise _bad(text, repr(rest), "lacks the :PORT (a port number or the Service's port name)")
    digits = port_name.isascii() and port_name.isdigit()  # str.isdigit() takes "²", which int() refuses
    if not digits and not _PORT_NAME.match(port_name):
        raise _bad(text, f"port {port_name!r}", "is neither a number nor a port name")
    if digits:
        parse_port(text, repr(rest), port_name)
    return Target(scheme, text, namespace=namespace, service=service, port_name=port_name)


def dns_server_for(target: Target, dns_server: str | None) -> str | None:
    """The DNS server a dns or dns+srv target asks: its own, else ``dns_server`` (None: /etc/resolv.conf's)."""
    if target.dns_server and dns_server and parse_dns_server(dns_server) != parse_dns_server(target.dns_server):
        raise ConfigError(f"target {target.text!r} asks DNS server {target.dns_server} and dns_server says"
                          f" {dns_server}; give the DNS server in one place")
    return target.dns_server or dns_server


def make_resolver(target: Target, *, dns_server: str | None = None, refresh: float = 30.0,
                  name: str = "plugin", kubernetes: Mapping[str, Any] | None = None,
                  allow_loopback: bool = False) -> Resolver:
    """The resolver ``target`` names. ``dns_server`` ("IP" or "IP:PORT") is used by dns and dns+srv
    whose target names none (one naming another is a ConfigError); ``kubernetes`` holds extra keyword
    arguments of the Kubernetes resolver (kubeconfig, context, api_client). ``allow_loopback``: DNS
    answers and EndpointSlices may name loopback addresses (refused by default; static:/// takes any)."""
    if target.scheme in ("static", "unix"):
        from plugbay.network.static import StaticResolver

        return StaticResolver(target.endpoints)
    if target.scheme in ("dns", "dns+srv"):
        try:
            from plugbay.network.resolvers import DNSResolver
        except ImportError as exc:
            raise ConfigError(f"target {target.text!r} needs DNS lookups, which need dnspython ({exc});"
                              " install plugbay with the network extra (pip install 'plugbay[network]')"
                              ) from exc
        return DNSResolver(target.host, target.port, srv=target.scheme == "dns+srv",
                           dns_server=dns_server_for(target, dns_server), refresh=refresh, name=name,
                           allow_loopback=allow_loopback)
    try:
        importlib.import_module("kubernetes")  # the client: an extra, needed once the resolver starts
        module = importlib.import_module("plugbay.network.kubernetes")
        factory = getattr(module, "EndpointSliceResolver")
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"target {target.text!r} needs Kubernetes discovery (plugbay.network.kubernetes), which is not"
            f" available here ({exc}); install plugbay with the kubernetes extra (pip install"
            " 'plugbay[kubernetes]'), or use a static:/// or dns:/// target") from exc
    resolver: Resolver = factory(namespace=target.namespace, service=target.service, port=target.port_name,
                                 **{"allow_loopback": allow_loopback, **dict(kubernetes or {})})
    return resolver
