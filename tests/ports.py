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
"""

from __future__ import annotations

import errno
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
