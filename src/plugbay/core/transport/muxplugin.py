"""The plugin side of the multiplexed connection: the announced listener's yamux server.

:class:`PluginFront` (a plugin its host launched) takes over the announced
listener and serves the host's one connection; :class:`AcceptedSession`
(network mode) serves one accepted connection per host. Streams that arrive
without a knock go to the plugin's own gRPC server.
"""

from __future__ import annotations

import logging
import socket
import threading

from plugbay.core.transport import admit, sockets
from plugbay.core.transport.keepalive import WRITE_TIMEOUT
from plugbay.core.transport.muxsession import POLL, MuxSession
from plugbay.core.transport.streamcap import Share
from plugbay.core.transport.yamux import Session

_PING_WAIT = 2.0  # a held session that does not answer a ping this fast is given up for a new host
_ACCEPTOR_JOIN = 5.0  # close() wakes the acceptor: this bounds only a loop stuck elsewhere

log = logging.getLogger("plugbay.mux")


class PluginFront(MuxSession):
    """Plugin side: owns the announced listener; yamux server over the host's connection."""

    def __init__(self, listener: socket.socket, target: tuple[str, str]) -> None:
        super().__init__("plugin-mux")
        self.peer = "the host"
        self.default_target = target
        self._listener = listener
        self.address = sockets.listener_address(listener)
        listener.settimeout(POLL)
        self._acceptor = threading.Thread(target=self._accept, name="plugbay-mux-accept", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        # go-plugin accepts one connection ever. plugbay admits a connection only once it
        # opened like a yamux client (admit.py), and lets it replace a session that is gone or
        # no longer answers a ping (a host lost behind a forward redials). A host that answers
        # keeps the plugin even while it carries no stream (its gRPC connection closed idle):
        # any local process can speak yamux, and would otherwise take the plugin from it.
        for conn, first in admit.admit_each(self._listener, lambda: self._closed):
            with self._lock:
                old = self._session
            if old is not None and not old.closed and old.ping(_PING_WAIT):
                log.warning("refused a second multiplexed host connection: the current one is live")
                conn.close()
                continue
            if conn.family != socket.AF_UNIX:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._attach(Session(conn, client=False, on_stream=self._on_stream, name="mux-plugin",
                                 first=first, start=False))
            if old is not None and not old.closed:
                log.info("a new multiplexed host connection replaced an unresponsive one")
                old.abort("replaced by a newer host connection")

    def _close_extra(self) -> None:
        # wakes the acceptor's poll now, not at its next ACCEPT_POLL (it saw the close 0.2 s late,
        # on top of a host's 2 s grace); closed only here, once the acceptor is done with it
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._acceptor.join(timeout=_ACCEPTOR_JOIN)
        sockets.close_listener(self._listener)


class AcceptedSession(MuxSession):
    """Plugin side of one accepted connection: network mode serves one such session per host.

    Un-knocked streams go to ``target`` (that host's own gRPC server). Build it,
    give it to that server's broker, then ``run(conn)``; ``ended`` turns True
    once the host is gone, and the owner then calls ``close()``. The streams
    the host opens count against the process's bounds (streamcap), and those
    of all sessions from ``peer`` (its address) against that peer's: any holder
    of a client certificate may open sessions.
    """

    def __init__(self, target: tuple[str, str], peer: str | None = None,
                 write_timeout: float = WRITE_TIMEOUT) -> None:
        super().__init__("plugin-mux")
        self.default_target = target
        self._share = Share(peer)
        self.peer = f"the host at {peer}" if peer else "a local host"
        self._write_timeout = write_timeout

    def run(self, conn: socket.socket) -> None:
        """Serve the yamux session on ``conn`` (once the target listens: streams route at once)."""
        conn.settimeout(None)
        self._attach(Session(conn, client=False, on_stream=self._on_stream, name="mux-net", start=False,
                             write_timeout=self._write_timeout))

    @property
    def ended(self) -> bool:
        with self._lock:
            return self._session is None or self._session.closed


def plugin_front(listener: socket.socket, target: tuple[str, str]) -> PluginFront:
    """serve()'s seam: take over the announced listener, forward main streams to ``target``."""
    return PluginFront(listener, target)
