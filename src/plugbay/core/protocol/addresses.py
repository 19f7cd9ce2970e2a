"""Whether plugbay may dial an address that something outside named as a peer: a DNS answer or an
EndpointSlice naming a replica, the Kubernetes API naming a pod's or a node's IP.

One check for every such caller, so that an address form refused in one place is refused in all. It
says what is wrong as a :class:`Refusal`; each caller words it for what the address was to be (a
replica, a pod) and for the opt-in it offers (loopback).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# AWS serves instance metadata (IMDS), DNS and time to IPv6 instances from fd00:ec2::254, ::253 and ::123:
# unique-local addresses, which no generic test refuses
_CLOUD_METADATA_V6 = ipaddress.IPv6Network("fd00:ec2::/64")
# NAT64's well-known prefix (RFC 6052): a translator dials the IPv4 address in the last 32 bits
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


class Problem(enum.Enum):
    """What is wrong with an address; the value says why, in words a caller may put in parentheses."""

    ZONE_INDEX = "a zone index (%...) names a network interface of this host, not a peer"
    CLOUD_METADATA = "fd00:ec2::/64 is AWS's instance metadata, DNS and time service"
    NO_PEER = "unspecified, multicast, broadcast or link-local"  # link-local: 169.254.169.254, cloud metadata
    LOOPBACK = "loopback: this host's own services"


@dataclass(frozen=True)
class Refusal:
    """Why an address may not be dialled. ``via`` is set when the address is an IPv6 one that reaches
    an IPv4 address through a translator or relay (NAT64, 6to4), and ``problem`` is that IPv4 address's:
    (the IPv4 address, the form's name)."""

    problem: Problem
    via: tuple[ipaddress.IPv4Address, str] | None = None

    def worded(self, words: Callable[[Problem], str]) -> str:
        """The caller's words for ``problem`` (text that follows "the address"), prefixed with the IPv4
        address reached when there is one."""
        why = words(self.problem)
        if self.via is None:
            return why
        return f"carries the IPv4 address {self.via[0]} ({self.via[1]}), which {why}"


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address that dialling ``ip`` reaches through a translator or relay, and the form's name."""
    if ip in _NAT64:  # a NAT64 translator turns 64:ff9b::a9fe:a9fe into 169.254.169.254
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64, 64:ff9b::/96"
    if ip.sixtofour is not None:  # a 6to4 relay tunnels 2002:a9fe:a9fe:: to 169.254.169.254
        return ip.sixtofour, "6to4, 2002::/16"
    return None


def peer_refusal(ip: IPAddress, *, allow_loopback: bool = False) -> Refusal | None:
    """Why plugbay may not dial ``ip`` as a peer something outside named; None if it may.

    Refused: a zone index (fd00::1%eth0 names an interface of the host that reads it, nothing of the
    peer, and each spelling would be a peer of its own); AWS's IPv6 metadata addresses
    (fd00:ec2::/64); unspecified, multicast and broadcast addresses (no peer) and link-local ones,
    where clouds serve instance metadata (169.254.169.254); loopback ones, this host's own services,
    unless ``allow_loopback``. An IPv6 address that carries an IPv4 one (IPv4-mapped ::ffff:0:0/96,
    NAT64 64:ff9b::/96, 6to4 2002::/16) is checked as the IPv4 address it reaches:
    64:ff9b::a9fe:a9fe is 169.254.169.254 behind a NAT64 translator.
    """
    via: tuple[ipaddress.IPv4Address, str] | None = None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            return Refusal(Problem.ZONE_INDEX)
        if ip in _CLOUD_METADATA_V6:
            return Refusal(Problem.CLOUD_METADATA)
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:169.254.169.254 is dialled as the IPv4 address it maps
        elif (via := _embedded_ipv4(ip)) is not None:
            ip = via[0]
    if ip.is_unspecified or ip.is_multicast or ip.is_link_local or ip == _BROADCAST:
        return Refusal(Problem.NO_PEER, via)
    if ip.is_loopback and not allow_loopback:
        return Refusal(Problem.LOOPBACK, via)
    return None
