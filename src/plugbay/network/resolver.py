"""What discovery hands the endpoint pool: endpoints, and the resolver interface every source implements.

A target (``static:///``, ``dns:///``, ``dns+srv:///``, ``kubernetes:///``,
``unix:///``) names a resolver; the resolver reports the full set of
endpoints it knows each time that set changes, and the pool keeps one channel
per endpoint. Resolvers never dial endpoints themselves.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from plugbay.core.protocol.addresses import Problem, peer_refusal
from plugbay.errors import ConfigError


@dataclass(frozen=True)
class Endpoint:
    """One replica of a remote plugin.

    ``network`` is "tcp" (``address`` is "HOST:PORT", IPv6 hosts in brackets)
    or "unix" (``address`` is a socket path). ``ready`` is False for an
    endpoint that is known but must not get new calls yet (a Kubernetes
    endpoint that is not ready); ``terminating`` marks one that is draining:
    calls in flight finish, new calls go elsewhere.
    """

    network: str
    address: str
    ready: bool = True
    terminating: bool = False
    name: str = ""  # where it came from (pod name, DNS name), for logs and metrics

    @property
    def key(self) -> str:
        return f"{self.network}:{self.address}"


OnChange = Callable[[Sequence[Endpoint]], None]

# Each endpoint costs a channel and a health check per interval: a runaway answer (a wildcard DNS
# record, a misconfigured zone, a Service of thousands of pods) must not turn into thousands of them.
# Every discovery source keeps at most this many (which ones: see each resolver).
MAX_ENDPOINTS = 256


class Resolver(Protocol):
    """A source of endpoints. ``start`` reports the first set before it returns (or raises a
    typed error); later sets come from the resolver's own thread, which ``close`` joins."""

    def start(self, on_change: OnChange) -> None: ...

    def close(self) -> None: ...


LOOPBACK_HINT = ("pass allow_loopback=True (RemoteConfig(allow_loopback=True), the CLI's --allow-loopback) if the"
                 " plugin really is served on this host's loopback, or name it with a static:/// target")


def _replica_words(problem: Problem) -> str:
    if problem is Problem.ZONE_INDEX:
        return "carries a zone index (%...): a zone index is no replica address"
    if problem is Problem.LOOPBACK:
        return f"is a loopback address, refused by default from discovery: {LOOPBACK_HINT}"
    return f"cannot be a replica ({problem.value})"


def refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_loopback: bool = False) -> str | None:
    """Why an address a DNS answer or an EndpointSlice named may not be a replica to dial (words that
    follow "the address"); None if it may.

    Discovery answers are input from outside: an unspecified, multicast or broadcast address is no
    replica, and a link-local one is where clouds serve instance metadata (169.254.169.254), which a
    spoofed answer must not point this host's health checks at. Nor a loopback one unless
    ``allow_loopback``: a spoofed answer would point calls carrying the host's client certificate at
    this host's own services (Kubernetes refuses loopback endpoints too). A static:/// target is the
    user's own word and is not checked.

    Cloud metadata services no generic test catches are refused too (AWS's IPv6 ones, fd00:ec2::/64;
    Azure's wire server, 168.63.129.16; Alibaba Cloud's, 100.100.100.200), and Teredo addresses
    (2001::/32), which no replica has; an IPv6 address that carries an IPv4 one (IPv4-mapped
    ::ffff:0:0/96, NAT64 64:ff9b::/96 and the local-use 64:ff9b:1::/48, 6to4 2002::/16, IPv4-compatible
    ::/96) is checked as the IPv4 address it reaches: 64:ff9b::a9fe:a9fe is 169.254.169.254 behind a
    NAT64 translator.

    A zone index (fd00::1%eth0) names a network interface of the host that reads the answer: it says
    nothing of the replica, and each spelling of one would be an endpoint of its own.

    The check is plugbay.core.protocol.addresses.peer_refusal, the one the Kubernetes runner makes of
    the pod IPs it dials; this words it for discovery.
    """
    why = peer_refusal(ip, allow_loopback=allow_loopback)
    return None if why is None else why.worded(_replica_words)


def refused_as_loopback(refused: Sequence[str]) -> bool:
    """Whether any of these refused addresses was refused only for being loopback (the opt-in takes it)."""
    for text in refused:
        try:
            if refusal(ipaddress.ip_address(text), allow_loopback=True) is None:
                return True
        except ValueError:
            continue
    return False


def all_refused(source: str, refused: Sequence[str]) -> str:
    """What to say when discovery found addresses, loopback ones among them, but refused every one."""
    said = ", ".join(refused[:5]) + (" ..." if len(refused) > 5 else "")
    return f"{source} names no address that may be a replica ({said}: all refused); {LOOPBACK_HINT}"


def discoverable(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_loopback: bool = False) -> bool:
    """Whether an address a DNS answer or an EndpointSlice named may be a replica to dial (see :func:`refusal`)."""
    return refusal(ip, allow_loopback=allow_loopback) is None


def parse_dns_server(text: str) -> tuple[str, int]:
    """ "IP", "IP:PORT" or "[IPV6]:PORT" -> (ip, port)."""
    host, port = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "53" if not rest else "?"
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"dns_server {text!r} is not IP or IP:PORT (an address, not a name),"
                          " e.g. '127.0.0.1:5353' or '[::1]:53'") from None
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ConfigError(f"dns_server {text!r} has port {port!r}; a port is a number from 1 to 65535")
    return host, int(port)
