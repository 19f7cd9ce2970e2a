"""One yamux stream (hashicorp/yamux's flow control): the part of plugbay.core.transport.yamux a bridge reads.

A stream buffers what its session's reader hands it, up to its receive
window, and returns window to the sender as the bytes leave this process.
Bridged to a local socket (attach_sink), the session reader sends payloads
straight to that socket and, while it can without blocking, returns the
window itself: no thread hand-off per frame or per window update.
"""

from __future__ import annotations

import math
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from typing import Protocol

from plugbay.core.transport.frames import Chunk, Piped
from plugbay.core.transport.yclose import Timed, TimedSession
from plugbay.core.transport.ysink import Sinking

_HDR = struct.Struct(">BBHII")
DATA, WINDOW_UPDATE, PING, GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 1, 2, 4, 8
WINDOW = 256 * 1024
# a bridge moves up to a window at a time: every chunk costs thread hand-offs, bytes are cheap
_CHUNK = WINDOW
# Once a stream's reader has consumed half a window, its receive window grows to this (as
# hashicorp/yamux with a larger MaxStreamWindowSize): the sender keeps sending while the reader
# drains. A stream that carries less (a call) or that nobody reads stays at WINDOW.
MAX_WINDOW = 4 * WINDOW
# Payloads up to this size are queued copied together: one object per tiny frame would cost a peer's
# window ~40 times over in memory (a 1-byte payload takes ~40 bytes as an object and a queue slot).
_SMALL = 1024
# Queued payloads are joined into one read only while they are smaller than this: joining copies,
# and a payload this big already pays for the read that hands it out alone (a copy of 64 KiB cost
# more than a read; a bulk peer's frames would be copied once more each)
_JOIN = 16 * 1024


class StreamClosed(Exception):
    pass


class Carrier(TimedSession, Protocol):
    """What a stream needs of its session (plugbay.core.transport.yamux.Session)."""

    def _send(self, kind: int, flags: int, sid: int, length: int, payload: memoryview | None = None,
              still: Callable[[], bool] | None = None) -> None: ...

    def _try_send(self, kind: int, flags: int, sid: int, length: int) -> bool: ...

    def _send_rst(self, sid: int, wait: bool = True) -> None: ...

    @property
    def can_splice(self) -> bool: ...

    def _send_piped(self, flags: int, sid: int, length: int, pipe: int) -> None: ...

    def forget(self, stream: Stream) -> None: ...


class Stream(Sinking, Timed):
    """One yamux stream: blocking read/write with flow control."""

    session: Carrier

    def __init__(self, session: Carrier, sid: int) -> None:
        self.session = session
        self.id = sid
        self._cond = threading.Condition()
        self._buf: deque[Chunk] = deque()  # received payloads, in order (small ones joined: _tail)
        self._tail = bytearray()  # the small payloads queued last, copied together (see _SMALL)
        self._buffered = 0
        self._send_window = WINDOW
        self._recv_window = WINDOW  # what the peer may still send before our next window update
        self._window_max = WINDOW  # our receive window: WINDOW, then MAX_WINDOW once data is consumed
        self._unacked = 0  # bytes consumed locally, not yet returned to the sender
        self._remote_fin = False
        self._local_fin = False
        self._reset = False
        self._closing = False  # closed this way, waiting for the peer's FIN with a timeout (see yclose)
        self._opening = False  # opened here, waiting for the peer's ACK with a timeout (see yclose)
        self._ended_by: type[StreamClosed] = StreamClosed  # what a writer waiting for window gets (_kill)
        self._flags = 0  # SYN or ACK, carried by our next frame
        # a bridge's local socket: the session reader sends payloads straight to it while
        # nothing is queued (one thread hand-off less per frame); see attach_sink()
        self._sink: socket.socket | None = None
        self._local: socket.socket | None = None  # the bridge's socket, kept while attached (see _kill)
        # the bridge lets the reader splice into the sink, whose fd it then makes non-blocking
        self._splice_sink = False
        self._sink_unblocked = False
        self._sending = False  # the bridge is sending queued bytes: new ones queue behind them
        self._direct = 0  # bytes sent straight to the sink, window not yet returned
        self._wake: Callable[[], None] | None = None  # starts the bridge's drain (see attach_sink)
        self._end: Callable[[], None] | None = None  # ends it instead, when the end is its only work
        self._draining = False  # the drain was started: never a second one
        self._got_data = False  # a DATA payload arrived (see on_first_data)
        self._on_data: Callable[[], None] | None = None

    # called by the session's reader thread
    def _data(self, payload: Chunk | Piped, flags: int) -> tuple[bool, bool]:
        """Take a DATA frame: (False when it overruns the receive window (a protocol error),
        whether the stream keeps a reference to ``payload`` (some of it is queued))."""
        with self._cond:
            if self._reset:
                # as hashicorp/yamux, which drops a reset stream: its frames in flight are discarded
                return True, False
            self._recv_window -= len(payload)
            if self._recv_window < 0:
                return False, False
            first = self._on_data if payload else None
            if payload:
                self._got_data, self._on_data = True, None
            chunk: Chunk
            if isinstance(payload, Piped):
                chunk = self._from_pipe(payload)
            else:
                chunk = payload
            if chunk and not isinstance(payload, Piped) and self._free_sink() is not None:
                sent = self._send_direct(chunk)
                self._direct += sent
                if sent:
                    chunk = memoryview(chunk)[sent:]
            kept = len(chunk) > _SMALL
            if kept:
                self._buf.append(chunk)
            elif chunk and self._buf and self._buf[-1] is self._tail and len(self._tail) < _CHUNK:
                self._tail += chunk
            elif chunk:
                self._tail = bytearray(chunk)
                self._buf.append(self._tail)
            self._buffered += len(chunk)
            self._flags_in(flags)
            if self._direct >= self._window_max // 2 and not self._buf:
                self._return_direct()
            if self._buf or flags & (FIN | RST) or self._direct >= self._window_max // 2:
                self._cond.notify_all()
            wake = self._drain_needed()
        if first is not None:
            first()
        if wake is not None:
            wake()
        return True, kept

    def on_first_data(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the peer sent a payload (now if it did already), on the session's
        reader thread: it must not block. A peer's bytes on a stream prove it is routed somewhere."""
        with self._cond:
            now = self._got_data
            if not now:
                self._on_data = callback
        if now:
            callback()

    def _drain_needed(self) -> Callable[[], None] | None:
        """The bridge's drain to start (after the lock is released): once, at its first work."""
        if self._wake is None or self._draining:
            return None
        if self._buf or self._remote_fin or self._reset or self._direct >= self._window_max // 2:
            self._draining = True
            if self._end is not None and not self._buf and (self._remote_fin or self._reset):
                # nothing left to send to the sink: no window is owed past the end (consumed()),
                # so the end needs no thread of its own, only a shutdown of the sink
                return self._end
            return self._wake
        return None

    def _return_direct(self) -> None:
        """Return the window of bytes sent straight to the sink, if the session can send it without
        waiting (the lock held; otherwise the bridge returns it with take()). It may pass the stream's
        ACK the reader queued: hashicorp/yamux takes both orders; a reset stream returns nothing."""
        if self._remote_fin or self._reset:
            return
        grow = MAX_WINDOW - self._window_max if self._window_max < MAX_WINDOW else 0
        delta = self._direct + self._unacked + grow
        if self.session._try_send(WINDOW_UPDATE, self._flags, self.id, delta):
            self._direct = self._unacked = self._flags = 0
            self._window_max += grow
            self._recv_window += delta

    @property
    def receive_window(self) -> int:
        """What the peer may still send before our next window update."""
        with self._cond:
            return self._recv_window

    def _window(self, delta: int, flags: int) -> None:
        with self._cond:
            self._send_window += delta
            self._flags_in(flags)
            self._cond.notify_all()
            wake = self._drain_needed()
        if wake is not None:
            wake()

    def _flags_in(self, flags: int) -> None:
        if flags & FIN:
            self._remote_fin = True
        if flags & RST:
            self._reset = True
        # the peer's FIN ends the open timeout too, as hashicorp/yamux's (a stream it closed was accepted)
        self._timers_in(flags & (FIN | RST), flags & (ACK | FIN | RST))

    def _kill(self, error: type[StreamClosed] = StreamClosed) -> None:
        with self._cond:
            self._reset = True
            self._ended_by = error
            self._no_timeouts()
            self._cond.notify_all()
            wake = self._drain_needed()
            if self._local is not None:  # the up loop may wait to receive from it, not on the stream
                try:  # under the lock: the bridge detaches before it closes the socket; reading only:
                    self._local.shutdown(socket.SHUT_RD)  # what was received still goes out to it
                except OSError:
                    pass
        if wake is not None:
            wake()

    def _take_flags(self) -> int:
        flags, self._flags = self._flags, 0
        return flags

    def read(self, limit: int = _CHUNK) -> Chunk:
        """Up to ``limit`` bytes (bytes-like, not copied where possible); b"" once the peer
        closed its side (or the stream reset)."""
        with self._cond:
            while not self._buf and not self._remote_fin and not self._reset:
                self._cond.wait()
            if not self._buf:
                return b""
            return self._pop(limit)

    # a bridge's side: attach_sink() (Sinking), then take() / sent() in a loop

    def take(self, limit: int = _CHUNK) -> tuple[Chunk | None, int]:
        """(bytes the sink did not take, or None, or b"" at the end; window bytes to return)."""
        with self._cond:
            while (not self._buf and not self._remote_fin and not self._reset
                   and self._direct < self._window_max // 2):
                self._cond.wait()
            return self._take(limit)

    def _take(self, limit: int) -> tuple[Chunk | None, int]:
        direct, self._direct = self._direct, 0
        if not self._buf:
            return (b"" if self._remote_fin or self._reset else None), direct
        self._sending = True
        return self._pop(limit), direct

    def _pop(self, limit: int) -> Chunk:
        """The next up to ``limit`` queued bytes (called with the lock held, data queued)."""
        data = self._buf.popleft()
        if len(data) > limit:
            view = memoryview(data)
            self._buf.appendleft(view[limit:])
            data = view[:limit]
        elif len(data) < _JOIN and self._buf and len(data) + len(self._buf[0]) <= limit:  # small frames: join them
            parts, size = [data], len(data)
            while self._buf and len(self._buf[0]) < _JOIN and size + len(self._buf[0]) <= limit:
                parts.append(self._buf.popleft())
                size += len(parts[-1])
            data = b"".join(parts)
        self._buffered -= len(data)
        return data

    def consumed(self, n: int) -> None:
        """Return ``n`` bytes of window to the sender once they left this process: as hashicorp/yamux,
        once half the window is owed (with less, the peer has window left or bytes queued here still
        owe more). A call's short stream sends none, which could cross its end: hashicorp/yamux logs
        a frame for a stream it dropped as one for a missing stream."""
        with self._cond:
            self._unacked += n
            if self._unacked < self._window_max // 2 and not self._flags:
                return
            delta, self._unacked = self._unacked, 0
            if self._remote_fin or self._reset or delta == 0:
                return
            if self._window_max < MAX_WINDOW:
                delta += MAX_WINDOW - self._window_max
                self._window_max = MAX_WINDOW
            self._recv_window += delta
            flags = self._take_flags()
        self.session._send(WINDOW_UPDATE, flags, self.id, delta, still=self._peer_sends)

    def _peer_sends(self) -> bool:
        """Whether window still matters to the peer (no FIN from it, no reset), checked again under the
        send lock as an update goes out: the end may have come since, and our FIN after it. (The
        reader never waits for that lock while it holds the stream's: no lock-order cycle.)"""
        with self._cond:
            return not (self._remote_fin or self._reset)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            n, flags = self._take_window(min(len(view), _CHUNK))
            self.session._send(DATA, flags, self.id, n, view[:n])
            view = view[n:]

    def write_piped(self, pipe: int, n: int) -> None:
        """Send the ``n`` bytes waiting in ``pipe`` (see Session._send_piped), in frames the window allows."""
        while n:
            k, flags = self._take_window(n)
            self.session._send_piped(flags, self.id, k, pipe)
            n -= k

    def _take_window(self, wanted: int) -> tuple[int, int]:
        """Up to ``wanted`` bytes of send window, waited for, and the flags the frame carries."""
        with self._cond:
            while self._send_window == 0 and not self._reset:
                self._cond.wait()
            if self._reset or self._local_fin:
                raise self._ended_by(f"yamux stream {self.id} is closed")
            n = min(wanted, self._send_window)
            self._send_window -= n
            return n, self._take_flags()

    def close_write(self) -> None:
        with self._cond:
            if self._local_fin or self._reset:
                return
            self._local_fin = True
            self._cond.notify_all()  # a bridge's down loop may wait for both FINs (bridges._ended_both_ways)
            flags = self._take_flags() | FIN
            self._timers_in(0, 1)  # closed here: no longer waiting for the peer's ACK (as hashicorp/yamux's Close)
            timeout = self.session.stream_close_timeout
            if not self._remote_fin and timeout < math.inf:
                self._await_fin(timeout)
        self.session._send(WINDOW_UPDATE, flags, self.id, 0)
        if self._remote_fin:  # closed both ways: as hashicorp/yamux, the session drops it
            self.session.forget(self)

    def reset(self, wait: bool = True) -> None:
        """End the stream both ways and tell the peer (RST). ``wait``: False for a thread that must not
        wait for the send lock (another writer may hold it, stuck on a full socket): the RST then goes
        now if it can, or soon by another thread, behind the frames queued so (Session._control)."""
        with self._cond:
            if self._reset:
                return
            self._reset = True
            self._no_timeouts()
            self._cond.notify_all()
            wake = self._drain_needed()
        if wake is not None:
            wake()
        try:
            self.session._send_rst(self.id, wait)
        except StreamClosed:
            pass  # the whole session is gone, which resets every stream anyway
        # no frame of it matters any more: kept, a refused stream the peer still sends on
        # would buffer up to its window, and the session would track it for good
        self.session.forget(self)

    @property
    def done(self) -> bool:
        with self._cond:
            return self._reset or (self._local_fin and self._remote_fin and not self._buffered)
