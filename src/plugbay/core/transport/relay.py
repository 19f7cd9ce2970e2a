"""A TLS relay: OpenSSL (Python's ssl) on one side of a socket pair, plaintext on the other.

grpcio's BoringSSL cannot handshake with go-plugin's P-521 AutoMTLS
certificates. Where a Go peer is on the other end, plugbay keeps gRPC in
plaintext on a private unix socket and lets this relay speak TLS to the peer:

* ``originate`` (host side): the gRPC channel dials the relay's private socket;
  the relay dials the plugin and runs the TLS client handshake.
* ``terminate`` (plugin side): the relay listens on the address the plugin
  announces, runs the TLS server handshake, and forwards to the gRPC server's
  private socket.

No thread of its own: the relay's listener and every relayed connection are
driven by the host's one shared I/O loop (plugbay.core.transport.ioloop,
"plugbay-io"; in a plugin process the same loop, started by the first
relay), one non-blocking step per readiness event
(plugbay.core.transport.relayconn), so an SSL object is only ever used from
that one thread and a hundred live Go plugins cost no thread each. Nothing on
the loop waits: a slow or silent peer only holds its own connection.
Once one side has ended, what it sent must keep moving: ``drain_timeout``
seconds without progress close the connection (the other peer is gone).
The TLS handshake has :data:`HANDSHAKE_TIMEOUT` (plugbay.core.transport.sockets)
seconds in total (not per read: a peer trickling bytes is cut off too); in
``terminate`` mode nothing is dialed for a peer before its handshake completed,
and at most :data:`MAX_HANDSHAKING` accepted connections may be in their
handshake at once (for a new one, the oldest of the peer address holding the
most is dropped, so a flood from one address evicts its own): anyone who can reach the address can connect
before proving anything, and idle connections must not take every file
descriptor from the hosts that can prove themselves. Established connections
are not counted. ``originate`` accepts only the host's own connections on a
private socket (its gRPC channel's, and network mode's knocks that have it dial: MuxEndpoint.check_dial), so it
has no cap.

For network mode the context may be a provider (called per handshake, so
rotated files apply to new connections) and, terminating, the target may be a
*router*: it sees the first plaintext bytes the peer sent after the handshake
(within ``first_bytes_timeout``) and the connection (its peer's address, and
``on_close`` for what the router counts per peer until it closes), and names
where the connection goes (None: drop it). Those bytes are then delivered there first.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Callable
from typing import Literal, Union

from plugbay.core.transport.ioloop import READ, IOLoop, Registration, shared
from plugbay.core.transport.relayconn import RelayConn, Setup, Target
from plugbay.core.transport.sockets import (
    ACCEPT_PAUSE,
    HANDSHAKE_TIMEOUT,
    AcceptShortage,
    close_listener,
    listener_address,
)

__all__ = ["TLSRelay", "Target", "ContextSource"]

ContextSource = Union[ssl.SSLContext, Callable[[], ssl.SSLContext]]

_log = logging.getLogger("plugbay.relay")
_ACCEPTS_PER_WAKE = 64  # then the loop serves the others before accepting more
_CLOSE_WAIT = 5.0
MAX_HANDSHAKING = 128  # terminate: connections in their TLS handshake at once, per relay (admit.MAX_PENDING's twin)
DRAIN_TIMEOUT = 10.0  # the multiplexed connection's keepalive timeout's default: a peer this silent is gone


class TLSRelay:
    """Copies bytes between plaintext and TLS connections until closed."""

    def __init__(self, listener: socket.socket, target: Target, context: ContextSource,
                 mode: Literal["originate", "terminate"], server_hostname: str = "localhost",
                 handshake_timeout: float = HANDSHAKE_TIMEOUT, first_bytes_timeout: float = 5.0,
                 loop: IOLoop | None = None, drain_timeout: float = DRAIN_TIMEOUT) -> None:
        if callable(target) and mode != "terminate":
            raise ValueError("a routing target needs mode='terminate'")
        if not drain_timeout > 0:
            raise ValueError(f"drain_timeout must be a positive number of seconds, got {drain_timeout!r}")
        self._listener = listener
        self._loop = loop or shared()
        self._closed = False
        self._conns: set[RelayConn] = set()  # loop thread only
        self._setup = Setup(self._loop, mode, target, context if callable(context) else (lambda: context),
                            server_hostname, handshake_timeout, first_bytes_timeout, self._conns.discard,
                            drain_timeout)
        self._shortage = AcceptShortage("a TLS relay", _log)  # out of descriptors: told once per run, not per try
        listener.setblocking(False)
        self._reg: Registration = self._loop.add(listener.fileno(), self._accept)

    @property
    def address(self) -> tuple[str, str]:
        return listener_address(self._listener)

    @property
    def resumed(self) -> int:
        """Originate: connections whose handshake resumed the peer's earlier session (see tlsresume)."""
        return self._setup.resumption.resumed

    @property
    def dial_refused_at(self) -> float | None:
        """Originate: when (time.monotonic()) the newest dial to the target that was refused or reset began
        (nothing listened there); None until a dial failed so, and once one connected."""
        return self._setup.dial_refused_at

    @property
    def dial_outcome_begun(self) -> float:
        """Originate: when (time.monotonic()) the newest dial whose outcome (refused or connected) is known began;
        0.0 before any."""
        return self._setup.dial_outcome_begun

    @property
    def connections(self) -> int:
        """Relayed connections open now (dialing, in their handshake or pumping)."""
        return len(self._conns)

    def close(self) -> None:
        """Stop accepting and drop every connection (on the loop thread; waited for here)."""
        if self._closed:
            return
        self._closed = True
        if self._loop.on_loop():
            self._shutdown()
            return
        done = threading.Event()

        def shutdown() -> None:
            try:
                self._shutdown()
            finally:
                done.set()

        self._loop.call_soon(shutdown)
        if not done.wait(_CLOSE_WAIT):  # pragma: no cover - a stuck loop; never leave the listener open
            _log.warning("the I/O loop did not close a TLS relay within %gs", _CLOSE_WAIT)
        for thread in list(self._setup.resolvers):
            thread.join(timeout=_CLOSE_WAIT)

    def _shutdown(self) -> None:
        self._reg.cancel()  # before the fd is closed: its number may be reused at once
        close_listener(self._listener)
        for conn in list(self._conns):
            conn.close()

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_WAKE):
            if self._closed:
                return
            try:
                conn, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if self._shortage.refused(exc):  # stop accepting a moment instead of spinning
                    self._reg.want(0)
                    self._loop.call_later(ACCEPT_PAUSE, self._resume)
                return
            self._shortage.accepted()
            if conn.family != socket.AF_UNIX:  # small gRPC frames must not wait for Nagle's algorithm
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            relayed = RelayConn(self._setup)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                relayed.peer = addr[0]
            self._conns.add(relayed)
            if self._setup.mode == "terminate":
                self._admit(relayed)
            relayed.start(conn)

    def _admit(self, relayed: RelayConn) -> None:
        """Count a connection as handshaking (it leaves on its handshake or close); past the cap, drop the
        oldest of the peer address holding the most. A flood from one address then evicts its own
        connections, not a distant host's whose handshake takes a round trip or two."""
        handshaking = self._setup.handshaking
        if len(handshaking) >= MAX_HANDSHAKING:
            held = Counter(conn.peer for conn in handshaking)
            most = max(held, key=held.__getitem__)  # the first of equals: the one with the oldest
            # debug only: a flood must not flood the log too
            _log.debug("TLS relay: %d connections in their handshake; dropping %s's oldest", len(handshaking),
                       most or "a local peer")
            next(conn for conn in handshaking if conn.peer == most).close()
        handshaking[relayed] = None

    def _resume(self) -> None:
        if not self._closed:
            self._reg.want(READ)
