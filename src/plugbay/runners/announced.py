"""LocalAddresses, a base of ProcessRunner: a TCP address a process plugin announces that is not this
machine's is refused, never dialed.

A handshake line (and a ConnInfo on the broker stream) is the plugin's word, untrusted: dialed
unchecked, 169.254.169.254:80 or another host would get the host's calls, its client certificate's
handshake and kill()'s Shutdown. A process plugin listens on this machine, so an address it announces
must be loopback or one of this machine's own (bound and routed from here; a link-local IPv6 address on
the interface its scope names); a host name is refused but "localhost" (a resolver's answer may lead
anywhere). Which local process listens on the handshake's port is proven before the first dial
(runners.ownsocket: the plugin's own, unless ClientConfig(trust_announced_address=True)); a brokered
address (a ConnInfo) is kept on this machine here, and then proven the same way through the host's broker
(core.host.socketpin.BrokeredProof). A plugin run in another network namespace on purpose is reached when
ProcessRunner(trusted_networks=[...]) names its network. Unix paths are the Client's to check
(core.host.connect.announced_file), not this module's.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from collections.abc import Sequence

from plugbay.errors import ConfigError, MalformedHandshakeError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_TRUST_ADVICE = ("If the plugin runs in another network namespace on purpose, name its network in"
                 " ProcessRunner(trusted_networks=[...]) (plugbay run: --trusted-network CIDR)")


def read_networks(networks: Sequence[str], what: str) -> tuple[IPNetwork, ...]:
    """``networks`` (CIDR texts) read strictly, or ConfigError naming ``what``."""
    if isinstance(networks, (str, bytes)):
        raise ConfigError(f"{what} must be a list of networks such as ['10.231.0.0/16'], not one text {networks!r}")
    found = []
    for text in networks:
        try:
            if not isinstance(text, str):  # ip_network() takes an int too: 7 would be 0.0.0.7/32
                raise TypeError(f"a {type(text).__name__}, not a str")
            found.append(ipaddress.ip_network(text))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{what} holds {text!r}, which is no IP network ({exc}); give CIDR texts such"
                              " as '10.231.0.0/16' or '192.0.2.7/32'") from None
    return tuple(found)


def _interface(scope: str) -> int | None:
    """The index of the interface an IPv6 scope names: its name first, then a number (as glibc, gRPC and Go
    read a zone: an interface named "4" is that interface, not index 4)."""
    try:
        return socket.if_nametoindex(scope)
    except (OSError, ValueError):
        pass
    try:
        if scope.isascii() and scope.isdigit():
            socket.if_indextoname(int(scope))  # OSError when no interface has it
            return int(scope)
    except (OSError, ValueError, OverflowError):
        pass
    return None


def _is_own(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, index: int) -> bool:
    """Whether ``ip`` is this machine's, in the kernel's own words: a socket may bind it, and the route to it
    leaves from it. bind() alone passes any address under net.ipv4/ipv6.ip_nonlocal_bind=1 (keepalived and
    HAProxy hosts), and a multicast or broadcast address always; the route to another machine's address
    (or to a group) leaves from one of this machine's own, and a broadcast one needs SO_BROADCAST (EACCES)."""
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    bare = str(ip).partition("%")[0]

    def at(port: int) -> tuple[str, int] | tuple[str, int, int, int]:
        return (bare, port) if ip.version == 4 else (bare, port, 0, index)

    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind(at(0))
        with socket.socket(family, socket.SOCK_DGRAM) as route:  # UDP: connect() only looks the route up
            route.connect(at(port))
            source = route.getsockname()[0]
    except OSError:
        return False
    return ipaddress.ip_address(source.partition("%")[0]) == ipaddress.ip_address(bare)


def _unmapped(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """[::ffff:10.1.2.3] is dialed over IPv4: it is that IPv4 address, for trusted networks and the kernel alike."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is None and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def trusted_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, trusted: Sequence[IPNetwork]) -> bool:
    """Whether ``ip`` (or the IPv4 address it maps) lies in one of ``trusted`` (ProcessRunner(trusted_networks=))."""
    return any(form.version == net.version and form in net for form in {ip, _unmapped(ip)} for net in trusted)


def trusted_address(address: str, trusted: Sequence[IPNetwork]) -> bool:
    """Whether tcp ``address`` (HOST:PORT, [V6]:PORT) names an IP address trusted_ip() says is trusted."""
    host = address.rpartition(":")[0]
    try:
        ip = ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
    except ValueError:
        return False
    return trusted_ip(ip, trusted)


def off_machine(address: str, trusted: Sequence[IPNetwork]) -> str | None:
    """Why the announced tcp ``address`` (HOST:PORT, checked by the handshake's parser) is not dialed
    from this machine (None: it is dialed as announced)."""
    host, _, port = address.rpartition(":")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if bare.lower() == "localhost":  # loopback by definition (RFC 6761); "localhost." is a DNS name to gRPC
        return None
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        return ("it names a host by name, and a resolver's answer may lead anywhere; have the plugin announce"
                " the IP address it listens on, such as 127.0.0.1:PORT, as go-plugin does")
    if trusted_ip(ip, trusted):
        return None  # the caller vouched for it (ProcessRunner(trusted_networks=))
    scope = ip.scope_id if isinstance(ip, ipaddress.IPv6Address) else None
    ip = _unmapped(ip)
    index = 0
    if scope is not None:
        found = _interface(scope)
        if found is None:
            return f"its scope {scope!r} names no network interface of this machine"
        index = found
    if (ip.is_loopback or ip.is_unspecified) and scope is None:  # 0.0.0.0 and :: are dialed on this machine
        return None
    if ip.version == 6 and ip.is_link_local and scope is None:  # the kernel binds and dials one only so
        return ("it is a link-local IPv6 address without a scope (such as %eth0) saying on which interface it is;"
                " have the plugin announce it with one, as go-plugin does")
    if not _is_own(ip, int(port), index):  # the kernel's answer, scope included ("fe80::1%eth0" is on eth0 or not)
        on = f" on interface {scope!r}" if scope is not None else ""
        return f"that address is not this machine's{on} (neither loopback nor one of its own). {_TRUST_ADVICE}"
    return None


class LocalAddresses:
    """ProcessRunner's refusal of announced TCP addresses off this machine (the fields it reads below)."""

    _proc: subprocess.Popen[bytes] | None
    _trusted: tuple[IPNetwork, ...]  # ProcessRunner(trusted_networks=)

    @property
    def name(self) -> str:
        raise NotImplementedError

    def plugin_to_host(self, network: str, address: str) -> tuple[str, str]:
        """The address as announced, or MalformedHandshakeError for a tcp one off this machine."""
        why = off_machine(address, self._trusted) if network == "tcp" and self._proc is not None else None
        if why is not None:
            raise MalformedHandshakeError(f"tcp|{address}", f"plugin {self.name!r} announced tcp address"
                                          f" {address!r}, which plugbay does not dial: {why}", refused=True)
        return network, address
