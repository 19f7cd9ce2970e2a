"""Header-only frames the yamux session reader could not send at once (for yamux.Session)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from plugbay.core.transport.frames import send_all
from plugbay.core.transport.sockets import shutdown_and_join

# Headers the reader may have waiting for a peer that does not read. Every one answers a frame
# of the peer's (a stream it opened or we refused, a ping), so past this the peer makes this
# side queue without bound: the session ends.
LATE_MAX = 16384
# hashicorp/yamux drops a ping's answer its sender cannot take at once: a few wait, no more
_PING_ANSWERS = 16


class LateControl:
    """Header-only frames the session reader could not send at once, sent by a short-lived thread.

    The reader must never wait to write: were it to wait for the send lock or a full socket
    while the peer's reader waited for this side in turn (two plugbay sessions writing in
    bulk both ways), neither would read again. What it cannot send without waiting (a new
    stream's ACK, a ping's answer, a refused stream's RST) goes here, and one thread at a
    time sends it under the send lock as any writer does, then ends.

    What waits here goes before any frame a writer sends later (flush()): else a new stream's
    frames, FIN too, could overtake its ACK (locks are not fair), which hashicorp/yamux, once
    the stream ended both ways, takes for a frame for a missing stream.
    """

    def __init__(self, sock: socket.socket, wlock: threading.Lock, closed: threading.Event, name: str,
                 timed_out: Callable[[], Callable[[], None]], limit: float) -> None:
        self._sock = sock
        self._limit = limit  # the session's write timeout (see send_all)
        # the session's end for its write timeout: called under the send lock, it returns the
        # step to take once the lock is released (Session._write_timed_out)
        self._timed_out = timed_out
        self._wlock = wlock
        self._closed = closed
        self._name = name
        self._lock = threading.Lock()
        self._queued: list[bytes] = []
        self._pings = 0  # ping answers among _queued
        self._sender: threading.Thread | None = None
        self._finisher: threading.Thread | None = None

    def send(self, header: bytes, ping_answer: bool = False) -> bool:
        """Queue ``header``; False (nothing queued) once LATE_MAX wait: the caller ends the session."""
        with self._lock:
            if self._closed.is_set():
                return True
            if ping_answer and self._pings >= _PING_ANSWERS:
                return True  # dropped: its pinger learns the connection is slow, as it is
            if len(self._queued) >= LATE_MAX:
                return False
            self._queued.append(header)
            self._pings += ping_answer
            if self._sender is not None:
                return True  # the running sender takes it
            self._sender = sender = threading.Thread(target=self._run, name=f"plugbay-{self._name}-late",
                                                     daemon=True)
        try:
            sender.start()
        except RuntimeError:  # no thread to be had: what is queued goes with the next try
            with self._lock:
                self._sender = None
            raise
        return True

    def finish(self, rest: bytes) -> None:
        """Send the ``rest`` of a header cut short by a full socket on a thread of its own, which
        then releases the send lock: the caller holds it and hands it over (a lock any thread may
        release), so no frame gets in between, and the reader goes on reading meanwhile."""
        finisher = threading.Thread(target=self._finish, args=(rest,), name=f"plugbay-{self._name}-cut",
                                    daemon=True)
        try:
            finisher.start()
        except RuntimeError:  # no thread to be had: the frame cannot be completed, so nothing may follow it
            shutdown_and_join([self._sock], [])
            self._wlock.release()
            return
        self._finisher = finisher

    def _finish(self, rest: bytes) -> None:
        after = None
        try:
            if not self._closed.is_set():
                send_all(self._sock, rest, None, self._limit)
        except OSError as exc:
            after = self._broken(exc)
        finally:
            self._wlock.release()
        if after is not None:
            after()

    def _broken(self, exc: OSError) -> Callable[[], None] | None:
        """A send failed under the send lock: part of a frame may be out, so none may follow it."""
        if isinstance(exc, BlockingIOError):  # no byte went for the write timeout (send_all)
            return self._timed_out()
        shutdown_and_join([self._sock], [])
        return None

    def pending(self) -> bool:
        """Whether headers wait, or a sender runs: a later header must follow them, never overtake them."""
        with self._lock:
            return self._sender is not None or bool(self._queued)

    def flush(self) -> None:
        """Send what waits here, before a frame of the caller's, who holds the send lock and found the
        session open (OSError as send_all: the caller's frame is not sent)."""
        if self._queued:  # nearly always empty: then a frame pays this one check
            send_all(self._sock, self.take(), None, self._limit)

    def take(self) -> bytes:
        """The headers waiting here, taken out by a holder of the send lock to go before its frame."""
        with self._lock:
            batch, self._queued, self._pings = b"".join(self._queued), [], 0
            return batch

    def _run(self) -> None:
        while True:
            after = None
            # taken under the send lock: a writer that got it first sent the batch (flush()), not after its frame
            with self._wlock:
                with self._lock:
                    if not self._queued or self._closed.is_set():
                        self._queued, self._pings, self._sender = [], 0, None  # dropped if ended
                        return
                batch = self.take()
                try:
                    send_all(self._sock, batch, None, self._limit)
                except OSError as exc:
                    after = self._broken(exc)
            if after is not None:
                after()

    def join(self, timeout: float) -> None:
        with self._lock:
            sender = self._sender
        for thread in (sender, self._finisher):
            if thread is not None and thread is not threading.current_thread() and thread.is_alive():
                thread.join(timeout)
