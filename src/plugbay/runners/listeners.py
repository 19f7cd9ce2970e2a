"""Whether a local process listens on an address: the proof a reattach needs before it dials.

Reattach data is untrusted. The pid it names is proven (start time, plugbay's
plugin id in its environment: plugbay.runners.attached), but the address beside
it is only text: a host that dialed it could send Puts, and at kill() the
controller's Shutdown, to any server on this machine. So the address is dialed
only when the proven process (or one of its own children) holds a listening
socket bound to it: a socket inode among its open files (/proc/PID/fd) that the
kernel's table of listeners (/proc/PID/net/unix, tcp, tcp6: the process's own
network namespace) shows listening there.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable

_UNIX_LISTENING = 0x00010000  # __SO_ACCEPTCON in /proc/net/unix's Flags column
_TCP_LISTEN = "0A"
_WILDCARDS = (ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::"))


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


def unix_listeners(pid: int, path: str) -> set[int]:
    """Inodes of unix sockets listening on ``path``, as process ``pid``'s namespace lists them."""
    wanted = {path, os.path.realpath(path)}
    found: set[int] = set()
    for fields in _lines(f"/proc/{pid}/net/unix"):
        # Num RefCount Protocol Flags Type St Inode [Path]
        if len(fields) >= 8 and int(fields[3], 16) & _UNIX_LISTENING and fields[7] in wanted:
            found.add(int(fields[6]))
    return found


def _hex_address(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, _, port = text.partition(":")
    raw = bytes.fromhex(host)
    # each 32-bit word is in the kernel's (little-endian) byte order
    ordered = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(ordered), int(port, 16)


def tcp_listeners(pid: int, address: str) -> set[int]:
    """Inodes of TCP sockets listening on ``address`` ("HOST:PORT", "[V6]:PORT"), or on its port on every
    address, as process ``pid``'s namespace lists them."""
    host, _, port_text = address.rpartition(":")
    try:
        want_ip = ipaddress.ip_address(host.strip("[]"))
        want_port = int(port_text)
    except ValueError:
        return set()
    mapped = want_ip.ipv4_mapped if isinstance(want_ip, ipaddress.IPv6Address) else None
    found: set[int] = set()
    for table in ("tcp", "tcp6"):
        for fields in _lines(f"/proc/{pid}/net/{table}"):
            # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if len(fields) < 10 or fields[3] != _TCP_LISTEN:
                continue
            try:
                ip, port = _hex_address(fields[1])
            except ValueError:
                continue
            if port == want_port and (ip in (want_ip, mapped) or ip in _WILDCARDS):
                found.add(int(fields[9]))
    return found


def listens_on(pids: Iterable[int], network: str, address: str) -> bool:
    """Whether one of ``pids`` holds a socket listening on ``network`` ``address``."""
    pids = list(pids)
    if not pids:
        return False
    held: set[int] = set()
    for pid in pids:
        held |= socket_inodes(pid)
    if not held:
        return False
    if network == "unix":
        listening = unix_listeners(pids[0], address)
    elif network == "tcp":
        listening = tcp_listeners(pids[0], address)
    else:
        return False
    return bool(held & listening)
