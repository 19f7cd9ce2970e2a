"""What a process plugin does when its host dies: stop, or wait a bounded time for a later host to reattach.

The host's end of the plugin's stderr pipe closes when the host dies (the stdio pump sees it: stdio.py's
watch_host). A plugin its host asked to outlive it (core/protocol/outlive.py) used to serve on for good, for a
reattach that might never come: a host killed outright with no later one left it running, which nothing
stopped. It now stops as on SIGTERM once no host has been connected to the address it announced for
PLUGBAY_OUTLIVE_GRACE seconds in a row; a reattached host keeps it serving while connected, and when that host
dies too the count starts again (any number of times).

"Connected", not "a call came": calls the dying host had sent can still sit in the socket's buffer and reach
a handler after the host died, and a reattached host can die too. The kernel's socket tables say who is
connected (/proc/net/unix lists each accepted connection with the listener's path until the server closes
its end, which gRPC does at the peer's EOF; /proc/net/tcp[6] an ESTABLISHED one with the listener's local
port): read about once a second on the stdio pump's thread once the host died, at its polls, and never while
a host is alive. No thread and no per-call cost. Where they cannot be read (not Linux, /proc hidden) the
plugin serves on after its host died, as before, said in a warning at start.
A multiplexed plugin (PLUGIN_MULTIPLEX_GRPC) cannot be reattached (as in go-plugin): it stops with its host.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import time
from collections.abc import Callable, Mapping

from plugbay.core.plugin.listener import Listening
from plugbay.core.plugin.logs import PluginLogging
from plugbay.core.plugin.setupfail import outlives_host
from plugbay.core.plugin.stdio import StdioCapture
from plugbay.core.protocol.outlive import ENV_OUTLIVE_GRACE, read_grace

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PROBE_EVERY = 1.0  # seconds between two looks at the socket tables once the host died
_READ_CAP = 64 << 20  # a table this long (some 500,000 sockets) is not read to its end: taken as "a peer"
_UNIX_CONNECTED = b"03"  # /proc/net/unix's St of an accepted connection (SS_CONNECTED)
_UNIX_LISTENING = b"01"  # ... and of a listener (SS_UNCONNECTED), told from an unconnected socket by its flag:
_ACCEPTCON = 0x10000  # __SO_ACCEPTCON, set by listen()
_TCP_ESTABLISHED = b"01"


def _table(path: str) -> bytes | None:
    """A /proc/net table in one read (bounded), or None when it cannot be read."""
    try:
        with open(path, "rb") as file:
            return file.read(_READ_CAP)
    except OSError:
        return None


def unix_peers(table: bytes, path: bytes) -> bool:
    """Whether /proc/net/unix's ``table`` lists a connection accepted on the listener bound to ``path``: the
    path is the line's last field, whole (``/x/s`` is not ``/x/s2``; spaces in it are kept)."""
    for line in table.split(b"\n"):
        fields = line.split(None, 7)  # Num RefCount Protocol Flags Type St Inode Path: the path may hold spaces
        if len(fields) == 8 and fields[7] == path and fields[5] == _UNIX_CONNECTED:
            return True
    return False


def bound_path(table: bytes, address: str) -> bytes | None:
    """The path the kernel lists for the listener at ``address`` as bound, which need not be ``address``
    itself: unix_target binds ``//x`` as ``/x``, and grpcio may write it otherwise again. The listening entry
    (St 01, __SO_ACCEPTCON) whose path names the same file, one of this process's own sockets first."""
    try:
        own = {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
    except OSError:
        own = set()
    found: list[tuple[bool, bytes]] = []
    for line in table.split(b"\n")[1:]:
        fields = line.split(None, 7)
        if len(fields) < 8 or fields[5] != _UNIX_LISTENING:
            continue
        try:
            if not int(fields[3], 16) & _ACCEPTCON or not os.path.samefile(fields[7], address):
                continue
        except (OSError, ValueError):
            continue
        found.append((f"socket:[{fields[6].decode()}]" in own, fields[7]))
    return max(found)[1] if found else None


def _ip(word: bytes) -> IPAddress:
    """A /proc/net/tcp[6] address: 32-bit words, each printed in the host's byte order; v4-mapped read as v4."""
    raw = bytes.fromhex(word.decode("ascii"))
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(raw)
    return (ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else ip


def tcp_peers(table: bytes, port: int, ip: IPAddress | None = None) -> bool:
    """Whether /proc/net/tcp's (or tcp6's) ``table`` has an ESTABLISHED connection whose local port is ``port``
    and local address ``ip`` (None: any, for a listener on all addresses)."""
    for line in table.split(b"\n")[1:]:
        fields = line.split(None, 4)  # sl local_address rem_address st ...
        if len(fields) == 5 and fields[3] == _TCP_ESTABLISHED:
            local_ip, _, local = fields[1].rpartition(b":")
            try:
                if int(local, 16) == port and (ip is None or _ip(local_ip) == ip):
                    return True
            except ValueError:  # UnicodeDecodeError too
                continue
    return False


def peer_probe(network: str, address: str) -> Callable[[], bool | None]:
    """Whether a peer is connected to the announced ``network`` ``address`` now (None: cannot tell here)."""
    if network == "unix":
        if "\n" in address:  # a line-based table cannot show it whole
            return lambda: None
        table = _table("/proc/net/unix")
        if table is None:
            return lambda: None
        # as bound, else as unix_target rewrites it (listed under a name this process cannot stat)
        path = bound_path(table, address) or os.fsencode("/" + address.lstrip("/") if address[:2] == "//" else address)

        def unix() -> bool | None:
            table = _table("/proc/net/unix")
            return None if table is None else len(table) >= _READ_CAP or unix_peers(table, path)
        return unix
    host, _, port_text = address.rpartition(":")
    if network != "tcp" or not port_text.isascii() or not port_text.isdigit():
        return lambda: None
    port = int(port_text)
    try:
        ip: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        ip = None  # not an address (the bound one is announced): the port alone, which can over-count only
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ip.ipv4_mapped or ip
    if ip is not None and ip.is_unspecified:
        ip = None

    def tcp() -> bool | None:
        tables = [t for t in (_table("/proc/net/tcp"), _table("/proc/net/tcp6")) if t is not None]
        return None if not tables else any(len(t) >= _READ_CAP or tcp_peers(t, port, ip) for t in tables)
    return tcp


class ReattachWait:
    """Once told the host died, ``stop`` once ``connected`` said no for ``grace`` seconds in a row."""

    def __init__(self, grace: float, connected: Callable[[], bool | None], stop: Callable[[], None]) -> None:
        self._grace = grace
        self._connected = connected
        self._stop = stop
        self._alone_since: float | None = None  # since when no peer was seen; None: the host is alive
        self._next = 0.0
        self._over = False

    def host_gone(self) -> None:
        """On the pump's thread, once."""
        self._alone_since = self._next = time.monotonic()

    def poll(self) -> None:
        """On the pump's thread, at each of its polls once the host died: a look at the tables a second."""
        now = time.monotonic()
        if self._over or self._alone_since is None or now < self._next:
            return
        self._next = now + PROBE_EVERY
        seen = self._connected()
        if seen is None:  # could be read at start, not now: serve on, as a plugin asked to outlive its host did
            self._over = True
        elif seen:  # a host (re)attached: the count starts again when it is gone
            self._alone_since = now
        elif now - self._alone_since >= self._grace:
            self._over = True
            self._stop()  # as on SIGTERM; said nowhere: the stderr our log records went to is gone


def watch_host(env: Mapping[str, str], capture: StdioCapture, logs: PluginLogging, listening: Listening,
               gone: Callable[[], None], stop: Callable[[], None]) -> list[str]:
    """Before the capture starts: ``gone`` when the host dies, or, when the host asked the plugin to outlive it,
    ``stop`` once no host was connected for a grace. Returns warnings for a log line while the host reads them."""
    if not outlives_host(env) or listening.multiplex:  # a multiplexed plugin cannot be reattached
        capture.watch_host(gone)
        logs.stop_when_host_gone(gone)
        return []
    grace, problem = read_grace(env.get(ENV_OUTLIVE_GRACE))
    notes = [problem] if problem else []
    if grace is not None:
        connected = peer_probe(listening.network, listening.address)
        if connected() is None:
            notes.append(f"cannot see the hosts connected to {listening.address!r} (no readable /proc/net table:"
                         " Linux only); once its host died this plugin serves on until told, however long")
        else:
            wait = ReattachWait(grace, connected, stop)
            capture.watch_host(wait.host_gone, wait.poll)
    return notes
