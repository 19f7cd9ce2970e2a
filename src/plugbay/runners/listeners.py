"""Whether a local process listens on an address: what the proofs before a dial read.

Reattach data and a handshake line are untrusted: an address dialed unproven could send Puts, and at kill()
the controller's Shutdown, to any server on this machine. The kernel's tables say which sockets listen where
(/proc/PID/net/unix by the path a socket was bound to; for tcp this host's own /proc/self/net/tcp, tcp6, where
the most specific binding wins, as in the kernel), and a process's open files (/proc/PID/fd) which of them it
holds. listens_on() proves a tcp address by those: every socket a dial could reach is held by the given
processes, in this host's network namespace. A unix path is proven by the socket on its file now
(runners.ownsocket: the kernel's sock_diag, else SO_PEERCRED of one connection, peer_pid/unix_peer_pid here),
as a link or rename leaves the bound name behind; unix_listeners() serves procstopped's look for the servers.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterable

_UNIX_LISTENING = 0x00010000  # __SO_ACCEPTCON in /proc/net/unix's Flags column
_TCP_LISTEN = "0A"


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process ``pid`` holds open (empty if that cannot be read)."""
    found: set[int] = set()
    folder = f"/proc/{pid}/fd"
    try:
        names = os.listdir(folder)
    except OSError:
        return found
    for name in names:
        try:
            link = os.readlink(f"{folder}/{name}")
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:[") and link.endswith("]"):
            found.add(int(link[8:-1]))
    return found


def _lines(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return [line.split() for line in f.readlines()[1:]]
    except OSError:
        return []


def _unix_table(pid: int) -> list[tuple[int, str]]:
    """(inode, path) of the listening unix sockets in process ``pid``'s namespace (paths may hold spaces)."""
    found: list[tuple[int, str]] = []
    try:
        with open(f"/proc/{pid}/net/unix", encoding="utf-8", errors="surrogateescape") as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return found
    for row in rows:
        # Num RefCount Protocol Flags Type St Inode [Path]: the path is the rest of the line
        fields = row.split(None, 7)
        if len(fields) == 8 and int(fields[3], 16) & _UNIX_LISTENING:
            found.append((int(fields[6]), fields[7]))
    return found


def unix_listeners(pid: int, path: str) -> set[int]:
    """Inodes of unix sockets listening on ``path`` (absolute; symlinks resolved), in ``pid``'s namespace."""
    if not path.startswith("/"):
        return set()  # relative to which folder? The plugin's and the host's may differ
    wanted = {path, os.path.realpath(path)}
    return {inode for inode, bound in _unix_table(pid) if bound in wanted}


def _hex_address(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, _, port = text.partition(":")
    raw = bytes.fromhex(host)
    # each 32-bit word is in the kernel's (little-endian) byte order
    ordered = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(ordered), int(port, 16)


def tcp_listeners(pid: int, address: str) -> set[int]:
    """Inodes of the TCP sockets a connection to ``address`` ("HOST:PORT", "[V6]:PORT") would reach, as
    process ``pid``'s namespace lists them: those bound to that very address if any is, else those
    bound to the port on every address of its family (IPv4 also reaches an IPv6 "::" listener,
    unless it is IPv6-only, which /proc does not show: then it counts only with no IPv4 listener).
    "localhost" is 127.0.0.1 and ::1, a dial may reach either; an IPv6 zone ("%eth0") is not compared."""
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    if host.lower() == "localhost":
        return tcp_listeners(pid, f"127.0.0.1:{port_text}") | tcp_listeners(pid, f"[::1]:{port_text}")
    try:
        given = ipaddress.ip_address(host)
        want_ip = ipaddress.ip_address(host.partition("%")[0])  # /proc's tables hold no zone
        want_port = int(port_text)
    except ValueError:
        return set()
    if isinstance(want_ip, ipaddress.IPv6Address) and want_ip.ipv4_mapped is not None:
        want_ip = want_ip.ipv4_mapped
    exact: set[int] = set()
    same_family: set[int] = set()
    dual: set[int] = set()
    for table in ("tcp", "tcp6"):
        for fields in _lines(f"/proc/{pid}/net/{table}"):
            # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if len(fields) < 10 or fields[3] != _TCP_LISTEN:
                continue
            try:
                ip, port = _hex_address(fields[1])
            except ValueError:
                continue
            if port != want_port:
                continue
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            inode = int(fields[9])
            if ip == want_ip:
                exact.add(inode)
            elif ip.is_unspecified and ip.version == want_ip.version:
                same_family.add(inode)
            elif ip.is_unspecified and want_ip.version == 4:
                dual.add(inode)  # "::" without IPV6_V6ONLY takes IPv4 too
    if exact:
        return exact
    # a wildcard listener takes only what reaches this machine: another host's address is not it
    # a zoned link-local address binds only with its zone
    return (same_family or dual) if _is_local(given if "%" in host else want_ip) else set()


def host_tcp_listeners(address: str) -> set[int]:
    """tcp_listeners() as this host's own network namespace lists them: read of this process, not of a plugin
    that could change namespace between a check of its namespace and the read."""
    return tcp_listeners(os.getpid(), address)


def _is_local(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``ip`` is one of this namespace's own addresses (the kernel lets a socket bind to it)."""
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(ip), 0))
    except OSError:
        return False
    return True


def peer_pid(conn: socket.socket) -> int:
    """The pid SO_PEERCRED names for a connected AF_UNIX socket: the listener's (0: none this pid namespace sees)."""
    pid, _, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return int(pid)


def unix_peer_pid(path: str) -> int | None:
    """The pid that listens on the unix socket now at ``path`` (SO_PEERCRED of a connection made and
    closed at once), or None while nothing listens there: the table names the path a socket was bound to,
    not the one there now. PermissionError (EACCES, EPERM): this process may not connect there at all."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            probe.connect(path)
            return peer_pid(probe)
    except PermissionError:
        raise  # no wait makes it connectable: the caller says so at once
    except OSError:
        return None


def _shares(pid: int, ns: str) -> bool | None:
    """Whether ``pid`` is in this process's ``ns`` namespace; None when its link cannot be read here."""
    try:
        return os.stat(f"/proc/{pid}/ns/{ns}").st_ino == os.stat(f"/proc/self/ns/{ns}").st_ino
    except OSError:
        return None


def same_net_namespace(pid: int) -> bool:
    """Whether ``pid`` is shown to see what this process sees at a tcp address: the same network namespace (its
    mounts do not matter: a plugin under `unshare -m` reaches the same ports). False when its link cannot be read."""
    return _shares(pid, "net") is True


def other_net_namespace(pid: int) -> bool:
    """Whether ``pid`` is shown to run in another network namespace than this process (False when its namespace
    link cannot be read: that tells nothing of where it runs)."""
    return _shares(pid, "net") is False


def listens_on(pids: Iterable[int], network: str, address: str, listening: set[int] | None = None) -> bool:
    """Whether ``pids`` hold every socket a connection to tcp ``address`` could reach (False for any other
    ``network``: a unix path is proven by its file, ownsocket.unix_listener_why, not by the name its socket was
    bound to, which a link or rename leaves behind). ``listening``: those sockets as this host's own network
    namespace lists them (host_tcp_listeners()), read once by a caller that asks of several sets of processes;
    else read here, of this host's table too."""
    if network != "tcp":
        return False
    pids = [pid for pid in pids if same_net_namespace(pid)]  # another namespace's 127.0.0.1 is not ours
    if not pids:
        return False
    held: set[int] = set()
    for pid in pids:
        held |= socket_inodes(pid)
    if not held:
        return False
    # the host's own table: a process of ``pids`` may change namespace after the check above
    listening = host_tcp_listeners(address) if listening is None else listening
    return bool(listening) and listening <= held  # every socket a dial could reach is the plugin's
