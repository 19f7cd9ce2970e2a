"""The splice(2) part of a yamux Session (plugbay.core.transport.yamux): payloads moved between
the connection and a pipe by the kernel, not copied through this process. Session inherits it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from plugbay.core.transport.frames import Chunk, Piped, keep_sending, pipe_for_splicing, send_all
from plugbay.core.transport.sockets import shutdown_and_join
from plugbay.core.transport.ylate import LateControl
from plugbay.core.transport.ystream import _HDR, ACK, DATA, FIN, RST, SYN, Stream, StreamClosed
from plugbay.core.transport.ywrite import WriteTimedOut, timed_out

_SPLICE = hasattr(os, "splice")  # Linux


class Splicing:
    """A Session's DATA frames whose payloads go by splice(2): sent from a pipe, received into one."""

    # the Session's own state and steps, set and defined there: declared for the type checker
    _sock: socket.socket
    _wlock: threading.Lock
    _lock: threading.Lock
    _closed: threading.Event
    _late: LateControl
    close_reason: str
    write_timeout: float
    _streams: dict[int, Stream]
    _pipe: tuple[int, int, int] | None

    if TYPE_CHECKING:
        def _shutdown(self, reason: str) -> None: ...

        def _closed_error(self) -> StreamClosed: ...

        def _write_timed_out(self) -> Callable[[], None]: ...

        def _stream_frame(self, sid: int, flags: int, payload: Chunk | Piped | None,
                          delta: int | None) -> str | None: ...

    @property
    def can_splice(self) -> bool:
        """Whether payloads may move into the socket straight from a pipe (a plain blocking socket;
        never TLS, whose bytes are not the payload's)."""
        return _SPLICE and type(self._sock) is socket.socket and self._sock.gettimeout() is None

    def _send_piped(self, flags: int, sid: int, length: int, pipe: int) -> None:
        """A DATA frame whose ``length``-byte payload waits in ``pipe``: moved by the kernel, not copied
        through this process (splice(2)); the frame is whole on the wire or the session is broken.
        Headers the reader queued before go first."""
        header = _HDR.pack(0, DATA, flags, sid, length)
        with self._wlock:
            if self._closed.is_set():
                raise self._closed_error()
            try:
                self._late.flush()
                send_all(self._sock, header, None, self.write_timeout, socket.MSG_MORE)
                fd = self._sock.fileno()

                def _splice_some(done: int) -> int:
                    moved = os.splice(pipe, fd, length - done)
                    if not moved:
                        raise OSError("the pipe ended inside a frame")
                    return moved

                keep_sending(_splice_some, length, self.write_timeout, time.monotonic())
            except OSError as exc:
                # part of the frame may be out: no other frame may follow it (still under the lock)
                end_streams = self._write_timed_out() if timed_out(exc) else None
                if end_streams is None:
                    shutdown_and_join([self._sock], [])
                failed = exc
            else:
                return
        if end_streams is not None:
            end_streams()
            raise WriteTimedOut(self.close_reason) from failed
        self._shutdown(f"connection error: a frame was cut short: {failed}")
        raise StreamClosed(f"the multiplexed connection failed: {failed}") from failed

    def _known(self, sid: int, flags: int) -> Stream | None:
        """The open stream a DATA frame goes to (None for one that opens a stream, or an unknown one)."""
        if flags & SYN:
            return None
        with self._lock:
            return self._streams.get(sid)

    def _splices_to(self, stream: Stream | None) -> Stream | None:
        """The stream whose large payload goes from the socket to its sink by splice(2), if any
        (``stream``: the frame's, see _known; the reader checked its window)."""
        if stream is None or not stream.splices or not self.can_splice:
            return None
        if self._pipe is None:
            self._pipe = pipe_for_splicing()
        return stream if self._pipe is not None else None

    def _splice_frame(self, stream: Stream, flags: int, length: int) -> str | None:
        """Move a payload off the socket through the reader's pipe, a pipe-full at a time (an error text)."""
        assert self._pipe is not None
        read_end, write_end, size = self._pipe
        sid = stream.id
        while length:
            try:
                moved = os.splice(self._sock.fileno(), write_end, min(length, size))
            except OSError as exc:
                return f"connection error: {exc}"
            if not moved:
                return "the peer closed the connection inside a payload"
            length -= moved
            last = flags if not length else flags & ~(FIN | RST)
            piped = Piped(read_end, moved)
            problem = self._stream_frame(sid, last, piped, None)
            if piped.n:  # a stream that was gone, or refused it: the pipe must be empty again
                piped.read(piped.n)
            if problem is not None:
                return f"protocol error: {problem}"
            flags &= ~(SYN | ACK)
        return None
