"""The writing part of a yamux Session (plugbay.core.transport.yamux): frames sent under the send
lock, and the connection's write timeout. Session inherits it.

hashicorp/yamux's "safety valve" (ConnectionWriteTimeout, 10 s): a frame that cannot be written
for that long means the peer stopped reading, and its session ends, whether or not a keepalive
runs. The kernel wakes the writer: the socket's SO_SNDTIMEO (an eighth of the timeout,
frames.SLICES) bounds every blocking send (and splice) into it, so a writer stuck on a full socket
gets EAGAIN, or a short count, that often, with no thread or timer per write; the writer ends the
session once no byte of its frame went out for the whole timeout (frames.keep_sending). The kernel
frees room in chunks, not per byte (about 36 KiB on a unix socket): a peer reading slower than one
chunk per timeout trips it too, as it would trip go's. The socket stays blocking (no Python socket
timeout): the reader's MSG_WAITALL receives and the splice path need that, and SO_SNDTIMEO leaves
receiving alone.
"""

from __future__ import annotations

import logging
import math
import socket
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from plugbay.core.transport.frames import SLICES, send_all
from plugbay.core.transport.keepalive import WRITE_TIMEOUT
from plugbay.core.transport.ylate import LATE_MAX, LateControl
from plugbay.core.transport.ystream import _HDR, PING, RST, WINDOW_UPDATE, StreamClosed
from plugbay.errors import ConfigError, ConnectionWriteTimeoutError

log = logging.getLogger("plugbay.mux")

__all__ = ["WRITE_TIMEOUT", "WriteTimedOut", "Writing", "check_write_timeout", "set_write_timeout", "timed_out"]
_TIMEVAL = struct.Struct("@ll")  # struct timeval: seconds, microseconds
_LONGEST = 2**31 - 1  # seconds: past this (or math.inf), no timeout


class WriteTimedOut(StreamClosed, ConnectionWriteTimeoutError):
    """The connection's write timeout ended the session: a StreamClosed to the code that carries
    streams, a plugbay error (a BrokerClosedError, a TimeoutError) to whoever called."""


def check_write_timeout(seconds: object, what: str = "write timeout") -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ConfigError(f"{what} must be a number of seconds > 0 (math.inf: none), got {seconds!r}")
    return float(seconds)


def set_write_timeout(sock: socket.socket, seconds: float) -> None:
    """Wake each blocking send into ``sock`` that waits for room every ``seconds`` / SLICES (SO_SNDTIMEO):
    frames.send_all then ends it once no byte went for ``seconds``."""
    if seconds >= _LONGEST or math.isinf(seconds):
        whole, micro = 0, 0  # a zero timeval: wait for good
    else:
        seconds /= SLICES
        whole = int(seconds)
        micro = int((seconds - whole) * 1e6) or (0 if whole else 1)  # never zero: that is no timeout
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _TIMEVAL.pack(whole, micro))


def timed_out(exc: OSError) -> bool:
    """Whether a send failed for the write timeout (frames.send_all's EAGAIN: a blocking socket's only one)."""
    return isinstance(exc, BlockingIOError)


class Writing:
    """A Session's frames out: sent whole under the send lock, or the session ends."""

    # the Session's own state and steps, set and defined there: declared for the type checker
    _sock: socket.socket
    _wlock: threading.Lock
    _closed: threading.Event
    _late: LateControl
    _reader: threading.Thread
    close_reason: str
    write_timeout: float
    _ended_by: type[StreamClosed]

    if TYPE_CHECKING:
        def _shutdown(self, reason: str) -> None: ...

        def _end(self, reason: str, error: type[StreamClosed]) -> Callable[[], None]: ...

    def _closed_error(self) -> StreamClosed:
        return self._ended_by(f"the multiplexed connection is closed ({self.close_reason})")

    def _write_timed_out(self) -> Callable[[], None]:
        """End the session for its write timeout, under the send lock (a frame may be cut short: no
        other may follow it); the returned step ends the streams, once that lock is released."""
        reason = (f"connection write timeout: the peer took no byte for {self.write_timeout:g} s (it"
                  " stopped reading); the connection is dropped")
        log.warning("%s: %s", self._reader.name, reason)
        return self._end(reason, WriteTimedOut)

    def _send(self, kind: int, flags: int, sid: int, length: int, payload: memoryview | None = None,
              still: Callable[[], bool] | None = None) -> None:
        """A whole frame, waited for; with ``still``, none if ``still()`` is false when the frame's
        turn comes (it is called under the send lock, so no frame another thread sends can slip in
        between that check and this frame). Headers the reader queued before go first."""
        header = _HDR.pack(0, kind, flags, sid, length)
        with self._wlock:
            if self._closed.is_set():
                raise self._closed_error()
            try:
                self._late.flush()
                if still is not None and not still():
                    return
                send_all(self._sock, header, payload, self.write_timeout)
                return
            except OSError as exc:
                if not timed_out(exc):
                    raise StreamClosed(f"the multiplexed connection failed: {exc}") from exc
                end_streams, failed = self._write_timed_out(), exc
        end_streams()
        raise WriteTimedOut(self.close_reason) from failed

    def _try_send(self, kind: int, flags: int, sid: int, length: int) -> bool:
        """Send a header-only frame if that does not wait for another writer or a full socket.

        The reader thread uses it: were it to wait for the socket, the peer's reader
        could wait for this side in turn, and neither would read any more.
        """
        if not self._wlock.acquire(blocking=False):
            return False
        handed = False
        try:
            if self._closed.is_set():
                return False
            header = _HDR.pack(0, kind, flags, sid, length)
            try:
                sent = self._sock.send(header, socket.MSG_DONTWAIT)
            except OSError:
                return False  # full (the bridge sends it later) or broken (the reader sees it)
            if sent < len(header):
                # a TCP buffer that filled inside the header (never a unix socket): no other frame
                # may go out before its rest, which waits for a peer that may not read for long,
                # so another thread sends it and keeps the send lock until then
                self._late.finish(header[sent:])
                handed = True
            return True
        finally:
            if not handed:
                self._wlock.release()

    def _send_rst(self, sid: int, wait: bool = True) -> None:
        """``wait``: False for a thread that must not wait for another writer (as the reader, e.g.
        on_stream refusing a stream): the RST goes now if it can, else soon, by another thread."""
        if not wait or threading.current_thread() is self._reader:
            self._control(WINDOW_UPDATE, RST, sid, 0)
        else:
            self._send(WINDOW_UPDATE, RST, sid, 0)

    def _control(self, kind: int, flags: int, sid: int, length: int) -> None:
        """A header-only frame from a thread that must not wait (the reader, a host's accept loop):
        now, or soon by another."""
        if self._late.pending() or not self._try_send(kind, flags, sid, length):  # the reader's frames in order
            try:
                queued = self._late.send(_HDR.pack(0, kind, flags, sid, length), ping_answer=kind == PING)
            except RuntimeError as exc:  # no thread to send it: the peer would wait for it for good
                self._shutdown(f"no thread to send the frames that answer the peer's ({exc})")
                return
            if not queued:
                self._shutdown(f"protocol error: the peer does not read the {LATE_MAX} frames that answer its own")
