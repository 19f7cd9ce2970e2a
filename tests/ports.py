"""Loopback TCP ports a test can count on.

A port found by binding port 0 and closing the socket is free only at that moment: the next bind(0) on the
machine (this run's own replicas, another test run's) may be given it, and a test that counted on "nothing
listens there" then dials a live server, or a server the test starts there later fails to bind. (On Linux
a bind(0) is given a free odd port at random, an outgoing connection an even one: only binds compete.)

A HeldPort keeps the port instead: a socket bound to it and never listening. The kernel answers every dial
to it with a reset (connection refused), and gives it to no bind(0) while it is held. A fresh one is bound
without SO_REUSEADDR: no other socket can bind it at all. One a server just stopped listening on may still
have its connections' TIME_WAIT entries, which refuse such a bind: it then takes SO_REUSEADDR, and only an
explicit bind that sets it too (a grpcio server's) could share the port.

A server a test starts should bind port 0 itself and say where it listens (tests.net_util.Replica,
tests.test_network_broker.CounterReplica, the gateway's "listening tcp" line). One that must listen on a given
port later (a replica that comes back on its address) is started right after release(): the gap left is its
own start, not the whole time it was down.

A test whose point is the very address it asks a server for (the failed start that frees it, the handshake
line that names it) takes it from released_ports(): held until just before the server binds it. Another
bind(0) can still be given it in the gap, so the case is run again on a new port (a bounded number of times)
when, and only when, its own bind found the port taken (EADDRINUSE). Whether a server still holds the port
once it stopped is asked of that process's own sockets (held_by()), not by binding the port: a bind is
refused as well when a stranger took the port since.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager


class HeldPort:
    """A TCP port on ``host`` that refuses every dial until release(): a fresh one, or ``port``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family)
        try:
            try:
                self._sock.bind((host, port))  # bound, never listening: dials are refused
            except OSError as exc:
                if not port or exc.errno != errno.EADDRINUSE:
                    raise
                self._sock.close()  # TIME_WAIT entries of the server that stopped there: see above
                self._sock = socket.socket(family)
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self._sock.bind((host, port))
        except BaseException:
            self._sock.close()
            raise
        self.port = int(self._sock.getsockname()[1])

    def release(self) -> None:
        """Free the port (for a server to listen on now); idempotent."""
        self._sock.close()


@contextmanager
def refusing_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port on ``host`` that refuses every dial, and that nothing else can take, while the block runs."""
    held = HeldPort(host)
    try:
        yield held.port
    finally:
        held.release()


def released_ports(tries: int = 5, host: str = "127.0.0.1") -> Iterator[int]:
    """Fresh ports on ``host``, each held until it is yielded: for a case that binds the address it asks for at
    once. The caller takes the next one only when the case's own bind found its port taken meanwhile (a
    bind(0) elsewhere was given it in the gap), and breaks out otherwise; past ``tries`` that is a failure."""
    for _ in range(tries):
        held = HeldPort(host)
        held.release()
        yield held.port
    raise AssertionError(f"each of {tries} ports released for the case was taken before its server bound it")


def held_by(pid: int, port: int) -> list[str]:
    """The TCP sockets (IPv4 and IPv6, any state) process ``pid`` holds on local port ``port``, as /proc lists
    them: [] when it holds none, whatever other processes do with the port."""
    inodes: dict[str, str] = {}
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[1].rpartition(":")[2], 16) == port:
                inodes[fields[9]] = row.strip()
    held = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            held.append(inodes[target[8:-1]])
    return held


def bind_lost(said: BaseException | str) -> bool:
    """Whether ``said`` (a server's failed start on a port from released_ports(): its error, or the stderr of a
    process that served there) says the port was taken meanwhile."""
    return os.strerror(errno.EADDRINUSE) in str(said)
