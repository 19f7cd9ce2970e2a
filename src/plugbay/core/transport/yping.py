"""The ping part of a yamux Session (plugbay.core.transport.yamux): a ping answered within a
deadline, and one sent without waiting for a keepalive. Session inherits it.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING

from plugbay.core.transport.frames import send_within
from plugbay.core.transport.sockets import shutdown_and_join
from plugbay.core.transport.ylate import LateControl
from plugbay.core.transport.ystream import _HDR, PING, SYN


class Pinging:
    """A Session's pings: the reader thread sets ``_pings[id]`` when the peer's answer arrives."""

    # the Session's own state and steps, set and defined there: declared for the type checker
    _sock: socket.socket
    _wlock: threading.Lock
    _lock: threading.Lock
    _closed: threading.Event
    _late: LateControl
    _pings: dict[int, threading.Event]
    _ping_id: int

    if TYPE_CHECKING:
        def _shutdown(self, reason: str) -> None: ...

    def ping(self, timeout: float) -> bool:
        """Whether the peer answers a ping within ``timeout``; never blocks longer than that.

        False means the session cannot be trusted any more (its peer is gone or
        stuck, or half a frame may be on the wire): close it.
        """
        with self._lock:
            if self._closed.is_set():
                return False
            self._ping_id = (self._ping_id + 1) & 0xFFFFFFFF
            pid, answered = self._ping_id, threading.Event()
            self._pings[pid] = answered
        try:
            deadline = time.monotonic() + timeout
            if not self._wlock.acquire(timeout=timeout):
                return False  # a writer is stuck on a full connection
            header = _HDR.pack(0, PING, SYN, 0, pid)
            try:  # a socket full for a moment (bulk traffic) is waited for, up to the deadline
                # headers the reader queued go first (an answer then tells they were read too):
                # the ping follows them, by the same sender
                behind = not self._closed.is_set() and self._late.pending()
                sent = 0 if behind or self._closed.is_set() else send_within(self._sock, header, deadline)
                if 0 < sent < len(header):  # half a frame is out: no other frame may follow it
                    shutdown_and_join([self._sock], [])
            except OSError:
                return False
            finally:
                self._wlock.release()
            if behind:
                try:
                    if not self._late.send(header):
                        return False  # the reader finds the peer reads none of them either
                except RuntimeError:
                    return False  # no thread to send it
                sent = len(header)
            if 0 < sent < len(header):
                self._shutdown("connection error: a ping was cut short")
            return sent == len(header) and answered.wait(max(0.0, deadline - time.monotonic()))
        finally:
            with self._lock:
                self._pings.pop(pid, None)

    def ping_nowait(self) -> None:
        """Send a ping without waiting for the socket or another writer; its answer shows in ``heard``.

        A short-lived sender thread takes it (LateControl): a header cut short by a full
        socket must be finished before any other frame, and that may wait.
        """
        with self._lock:
            if self._closed.is_set():
                return
            self._ping_id = (self._ping_id + 1) & 0xFFFFFFFF
            pid = self._ping_id
        try:
            self._late.send(_HDR.pack(0, PING, SYN, 0, pid))
        except RuntimeError:
            pass  # no thread for a late send: the keepalive's timeout decides
