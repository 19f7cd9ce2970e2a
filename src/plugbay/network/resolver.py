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


def discoverable(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address a DNS answer or an EndpointSlice named may be a replica to dial.

    Discovery answers are input from outside: an unspecified, multicast or broadcast address is no
    replica, and a link-local one is where clouds serve instance metadata (169.254.169.254), which a
    spoofed answer must not point this host's health checks at. A static:/// target is the user's own
    word and is not checked.
    """
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:169.254.169.254 is dialled as the IPv4 address it maps
    return not (ip.is_unspecified or ip.is_multicast or ip.is_link_local
                or ip == ipaddress.IPv4Address("255.255.255.255"))


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
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"dns_server {text!r} has port {port!r}; a port is a number from 1 to 65535")
    return host, int(port)
