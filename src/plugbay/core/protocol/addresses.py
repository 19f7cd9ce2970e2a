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
# NAT64's well-known prefix (RFC 6052) and its local-use one (RFC 8215): a translator dials the IPv4
# address in the last 32 bits (the /96 form; a network that uses a shorter prefix out of 64:ff9b:1::/48
# spreads it elsewhere, and reading those bits as the address would refuse the /96 ones)
_NAT64 = ((ipaddress.IPv6Network("64:ff9b::/96"), "NAT64, 64:ff9b::/96"),
          (ipaddress.IPv6Network("64:ff9b:1::/48"), "local-use NAT64, 64:ff9b:1::/48"))
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


class Problem(enum.Enum):
    """What is wrong with an address; the value says why, in words a caller may put in parentheses."""

    ZONE_INDEX = "a zone index (%...) names a network interface of this host, not a peer"
    CLOUD_METADATA = "fd00:ec2::/64 is AWS's instance metadata, DNS and time service"
    AZURE_WIRESERVER = "168.63.129.16 is Azure's wire server: platform DNS, DHCP and the VM agent's metadata"
    ALIBABA_METADATA = "100.100.100.200 is Alibaba Cloud's instance metadata service"
    TEREDO = "Teredo, 2001::/32: a tunnel through a relay to an end host behind a NAT, no server's address"
    NO_PEER = "unspecified, multicast, broadcast or link-local"  # link-local: 169.254.169.254, cloud metadata
    LOOPBACK = "loopback: this host's own services"


# Metadata services some clouds serve from an IPv4 address that is neither link-local nor private, so no
# generic test refuses them. Only these /32s: the rest of 100.64.0.0/10 (shared address space) carries
# pod and node addresses on some clusters
_CLOUD_METADATA_V4 = {ipaddress.IPv4Address("168.63.129.16"): Problem.AZURE_WIRESERVER,
                      ipaddress.IPv4Address("100.100.100.200"): Problem.ALIBABA_METADATA}


@dataclass(frozen=True)
class Refusal:
    """Why an address may not be dialled. ``via`` is set when the address is an IPv6 one that reaches
    an IPv4 address through a translator or relay (NAT64, 6to4, IPv4-compatible), and ``problem`` is that
    IPv4 address's: (the IPv4 address, the form's name)."""

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
    for prefix, form in _NAT64:  # a NAT64 translator turns 64:ff9b::a9fe:a9fe into 169.254.169.254
        if ip in prefix:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), form
    if ip.sixtofour is not None:  # a 6to4 relay tunnels 2002:a9fe:a9fe:: to 169.254.169.254
        return ip.sixtofour, "6to4, 2002::/16"
    if int(ip) >> 32 == 0 and int(ip) > 1:  # ::a9fe:a9fe; :: and ::1 are IPv6's own unspecified and loopback
        return ipaddress.IPv4Address(int(ip)), "IPv4-compatible, ::/96"
    return None


def peer_refusal(ip: IPAddress, *, allow_loopback: bool = False) -> Refusal | None:
    """Why plugbay may not dial ``ip`` as a peer something outside named; None if it may.

    Refused: a zone index (fd00::1%eth0 names an interface of the host that reads it, nothing of the
    peer, and each spelling would be a peer of its own); cloud metadata services at addresses no generic
    test catches: AWS's IPv6 ones (fd00:ec2::/64), Azure's wire server (168.63.129.16) and Alibaba
    Cloud's metadata (100.100.100.200); unspecified, multicast and broadcast addresses (no peer) and
    link-local ones, where clouds serve instance metadata (169.254.169.254); loopback ones, this host's
    own services, unless ``allow_loopback``; Teredo ones (2001::/32), which no pod or replica has (a
    relay forwards to the NAT of an end host, whose address Teredo obfuscates). An IPv6 address that
    carries an IPv4 one (IPv4-mapped ::ffff:0:0/96, NAT64 64:ff9b::/96 and the local-use
    64:ff9b:1::/48 with the IPv4 address in the last 32 bits, 6to4 2002::/16, the deprecated
    IPv4-compatible ::/96) is checked as the IPv4 address it reaches: 64:ff9b::a9fe:a9fe is
    169.254.169.254 behind a NAT64 translator.
    """
    via: tuple[ipaddress.IPv4Address, str] | None = None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            return Refusal(Problem.ZONE_INDEX)
        if ip in _CLOUD_METADATA_V6:
            return Refusal(Problem.CLOUD_METADATA)
        if ip.teredo is not None:
            return Refusal(Problem.TEREDO)
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:169.254.169.254 is dialled as the IPv4 address it maps
        elif (via := _embedded_ipv4(ip)) is not None:
            ip = via[0]
    if isinstance(ip, ipaddress.IPv4Address) and (metadata := _CLOUD_METADATA_V4.get(ip)) is not None:
        return Refusal(metadata, via)
    if ip.is_unspecified or ip.is_multicast or ip.is_link_local or ip == _BROADCAST:
        return Refusal(Problem.NO_PEER, via)
    if ip.is_loopback and not allow_loopback:
        return Refusal(Problem.LOOPBACK, via)
    return None
