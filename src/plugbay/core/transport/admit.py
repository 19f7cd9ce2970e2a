"""Admission to a multiplexed plugin's address: a host shows itself by speaking yamux first.

With PLUGIN_MULTIPLEX_GRPC the plugin serves one yamux session on its
announced address; AutoMTLS, when on, runs *inside* the session's streams, so
nothing at the connection level proves who connected. The minimum bar is the
protocol itself: a host's yamux client opens a stream (SYN on an odd stream
id) or pings (SYN on stream 0) as soon as it connects. A connection whose
first frame header is not one of those, or that sends no full header within
:data:`FIRST_FRAME_WAIT` seconds, is closed without ever reaching the session.

All pending connections are watched by the one accept thread through a poll,
so neither an idle connection nor a flood of them delays the others; at most
:data:`MAX_PENDING` wait at once (the oldest is dropped first).
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections.abc import Callable, Iterator

from plugbay.core.transport.sockets import ACCEPT_PAUSE, ACCEPT_POLL, ACCEPT_SKIPS, AcceptShortage
from plugbay.core.transport.yamux import _HDR, DATA, PING, SYN, WINDOW_UPDATE

log = logging.getLogger("plugbay.mux")

FIRST_FRAME_WAIT = 3.0  # seconds a new connection has to send its first yamux frame header
MAX_PENDING = 128  # connections allowed to be in that wait at once


def is_client_opening(header: bytes) -> bool:
    """Whether ``header`` is a frame a yamux client may start a session with."""
    if len(header) != _HDR.size:
        return False
    version, kind, flags, sid, _ = _HDR.unpack(header)
    if version != 0 or not flags & SYN:
        return False
    if kind in (DATA, WINDOW_UPDATE):
        return bool(sid % 2 == 1)
    return bool(kind == PING and sid == 0)


def admit_each(listener: socket.socket, closed: Callable[[], bool],
               wait: float = FIRST_FRAME_WAIT) -> Iterator[tuple[socket.socket, bytes]]:
    """Yield (connection, its first frame header) for each connection that opened like a yamux client.

    The connection is blocking again when yielded; the header has been read off
    it and must be handed to the session. Ends when ``closed()`` or the
    listener is closed; connections still pending then are closed.
    """
    poller = select.poll()
    poller.register(listener.fileno(), select.POLLIN)
    pending: dict[int, tuple[socket.socket, bytearray, float]] = {}
    shortage = AcceptShortage("the multiplexed listener", log)

    def drop(fd: int, why: str) -> None:
        conn, _, _ = pending.pop(fd)
        poller.unregister(fd)
        log.debug("multiplexed listener: closing a connection that %s", why)
        conn.close()

    try:
        while not closed():
            now = time.monotonic()
            for fd in [fd for fd, (_, _, deadline) in pending.items() if deadline <= now]:
                drop(fd, f"sent no yamux frame within {wait:g}s")
            try:
                events = poller.poll(ACCEPT_POLL * 1000)
            except OSError:
                return
            if closed():  # woken by the close (a shut-down unix listener only fails accept() with EAGAIN)
                return
            for fd, _ in events:
                if fd == listener.fileno():
                    try:
                        conn, _ = listener.accept()
                    except (BlockingIOError, TimeoutError):
                        continue
                    except OSError as exc:
                        if shortage.refused(exc):  # the listener stays readable: pause, not spin
                            time.sleep(ACCEPT_PAUSE)
                            break  # the pending connections' deadlines are checked first
                        if exc.errno in ACCEPT_SKIPS:
                            continue
                        return
                    shortage.accepted()
                    conn.setblocking(False)
                    if len(pending) >= MAX_PENDING:
                        drop(next(iter(pending)), "waited while too many others were pending")
                    pending[conn.fileno()] = (conn, bytearray(), time.monotonic() + wait)
                    poller.register(conn.fileno(), select.POLLIN)
                    continue
                if fd not in pending:
                    continue
                conn, buf, _ = pending[fd]
                try:
                    data = conn.recv(_HDR.size - len(buf))
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    drop(fd, "closed before speaking yamux")
                    continue
                buf += data
                if len(buf) < _HDR.size:
                    continue
                if not is_client_opening(bytes(buf)):
                    drop(fd, "did not open with a yamux client frame")
                    continue
                del pending[fd]
                poller.unregister(fd)
                conn.setblocking(True)
                yield conn, bytes(buf)
    finally:
        for conn, _, _ in pending.values():
            conn.close()
