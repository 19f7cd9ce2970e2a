"""A yamux session (hashicorp/yamux's wire format), bridged to local sockets.

go-plugin's multiplexed broker runs a yamux session over the one connection
to the plugin's announced address; the main gRPC connection and every
brokered connection are streams of it. grpcio cannot speak over a Python
object, so each stream is *bridged*: bytes flow between the stream and a
plain local unix-socket connection that gRPC dials or serves on.

Frame: version(0) type flags(2) stream-id(4) length(4), big endian.
Types: Data, WindowUpdate, Ping, GoAway. Flags: SYN, ACK, FIN, RST. Client
streams are odd, server streams even; each stream starts with a 256 KiB
receive window, so a slow reader stops its sender (backpressure) instead of
growing buffers.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable

from plugbay.core.transport.frames import FrameReader, send_all

log = logging.getLogger("plugbay.yamux")

_HDR = struct.Struct(">BBHII")
DATA, WINDOW_UPDATE, PING, GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 1, 2, 4, 8
WINDOW = 256 * 1024
# a bridge moves up to a window at a time: every chunk costs thread hand-offs, bytes are cheap
_CHUNK = WINDOW
# Once a stream's reader consumes, its receive window grows to this (as hashicorp/yamux
# with a larger MaxStreamWindowSize): the sender keeps sending while the reader drains.
# A stream nobody reads stays at WINDOW.
MAX_WINDOW = 4 * WINDOW


Chunk = bytes | bytearray | memoryview  # what a stream reads: its payloads as received, not copied


class StreamClosed(Exception):
    pass


class Stream:
    """One yamux stream: blocking read/write with flow control."""

    def __init__(self, session: Session, sid: int) -> None:
        self.session = session
        self.id = sid
        self._cond = threading.Condition()
        self._buf: deque[Chunk] = deque()  # received payloads, in order, not copied together
        self._buffered = 0
        self._send_window = WINDOW
        self._recv_window = WINDOW  # what the peer may still send before our next window update
        self._window_max = WINDOW  # our receive window: WINDOW, then MAX_WINDOW once data is consumed
        self._unacked = 0  # bytes consumed locally, not yet returned to the sender
        self._remote_fin = False
        self._local_fin = False
        self._reset = False
        self._flags = 0  # SYN or ACK, carried by our next frame
        # a bridge's local socket: the session reader sends payloads straight to it while
        # nothing is queued (one thread hand-off less per frame); see attach_sink()
        self._sink: socket.socket | None = None
        self._sending = False  # the bridge is sending queued bytes: new ones queue behind them
        self._direct = 0  # bytes sent straight to the sink, window not yet returned

    # called by the session's reader thread
    def _data(self, payload: bytes | bytearray, flags: int) -> bool:
        """Take a DATA frame; False when it overruns the receive window (a protocol error)."""
        with self._cond:
            self._recv_window -= len(payload)
            if self._recv_window < 0:
                return False
            chunk: Chunk = payload
            if chunk and self._sink is not None and not self._buf and not self._sending and not self._reset:
                sent = self._send_direct(chunk)
                self._direct += sent
                if sent:
                    chunk = memoryview(chunk)[sent:]
            if chunk:
                self._buf.append(chunk)
                self._buffered += len(chunk)
            self._flags_in(flags)
            if self._buf or flags & (FIN | RST) or self._direct >= self._window_max // 2:
                self._cond.notify_all()
        return True

    def _send_direct(self, data: Chunk) -> int:
        assert self._sink is not None
        try:
            return self._sink.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0  # the local side is not reading: the bridge sends it when it can
        except OSError:
            self._sink = None  # broken: the bridge finds out on its next send
            return 0

    def _window(self, delta: int, flags: int) -> None:
        with self._cond:
            self._send_window += delta
            self._flags_in(flags)
            self._cond.notify_all()

    def _flags_in(self, flags: int) -> None:
        if flags & FIN:
            self._remote_fin = True
        if flags & RST:
            self._reset = True

    def _kill(self) -> None:
        with self._cond:
            self._reset = True
            self._cond.notify_all()

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

    # a bridge's side: attach_sink(), then take() / sent() in a loop

    def attach_sink(self, sink: socket.socket | None) -> None:
        """Let the session reader send payloads straight to ``sink`` while none are queued (None: stop).

        The bridge owning ``sink`` must then read with take(), call sent()
        after sending what take() gave it, and detach before closing ``sink``.
        """
        with self._cond:
            self._sink = sink

    def take(self, limit: int = _CHUNK) -> tuple[Chunk | None, int]:
        """(bytes the sink did not take, or None, or b"" at the end; window bytes to return)."""
        with self._cond:
            while (not self._buf and not self._remote_fin and not self._reset
                   and self._direct < self._window_max // 2):
                self._cond.wait()
            direct, self._direct = self._direct, 0
            if not self._buf:
                return (b"" if self._remote_fin or self._reset else None), direct
            self._sending = True
            return self._pop(limit), direct

    def sent(self) -> None:
        """What take() gave is sent: the reader may send straight to the sink again."""
        with self._cond:
            self._sending = False

    def _pop(self, limit: int) -> Chunk:
        """The next up to ``limit`` queued bytes (called with the lock held, data queued)."""
        data = self._buf.popleft()
        if len(data) > limit:
            view = memoryview(data)
            self._buf.appendleft(view[limit:])
            data = view[:limit]
        elif self._buf and len(data) + len(self._buf[0]) <= limit:  # small frames: join them
            parts, size = [data], len(data)
            while self._buf and size + len(self._buf[0]) <= limit:
                parts.append(self._buf.popleft())
                size += len(parts[-1])
            data = b"".join(parts)
        self._buffered -= len(data)
        return data

    def consumed(self, n: int) -> None:
        """Return ``n`` bytes of window to the sender once they left this process."""
        with self._cond:
            self._unacked += n
            if self._unacked < self._window_max // 2 and self._buffered:
                return
            delta, self._unacked = self._unacked, 0
            if self._remote_fin or self._reset or delta == 0:
                return
            if self._window_max < MAX_WINDOW:
                delta += MAX_WINDOW - self._window_max
                self._window_max = MAX_WINDOW
            self._recv_window += delta
            flags = self._take_flags()
        self.session._send(WINDOW_UPDATE, flags, self.id, delta)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            with self._cond:
                while self._send_window == 0 and not self._reset:
                    self._cond.wait()
                if self._reset or self._local_fin:
                    raise StreamClosed(f"yamux stream {self.id} is closed")
                n = min(len(view), self._send_window, _CHUNK)
                self._send_window -= n
                flags = self._take_flags()
            self.session._send(DATA, flags, self.id, n, view[:n])
            view = view[n:]

    def close_write(self) -> None:
        with self._cond:
            if self._local_fin or self._reset:
                return
            self._local_fin = True
            flags = self._take_flags() | FIN
        self.session._send(WINDOW_UPDATE, flags, self.id, 0)

    def reset(self) -> None:
        with self._cond:
            if self._reset:
                return
            self._reset = True
            self._cond.notify_all()
        try:
            self.session._send(WINDOW_UPDATE, RST, self.id, 0)
        except StreamClosed:
            pass  # the whole session is gone, which resets every stream anyway

    @property
    def done(self) -> bool:
        with self._cond:
            return self._reset or (self._local_fin and self._remote_fin and not self._buffered)


class Session:
    """A yamux session over ``sock``; ``on_stream`` is told about streams the peer opens.

    ``on_stream`` runs on the reader thread, so routing decisions follow the
    order of frames on the wire; it must not block.
    """

    def __init__(self, sock: socket.socket, *, client: bool, on_stream: Callable[[Stream], None],
                 name: str = "mux", first: bytes = b"") -> None:
        self._sock = sock
        self._first = first  # bytes already read off ``sock`` (an admission check's first header)
        self._pings: dict[int, threading.Event] = {}
        self._ping_id = 0
        self._client = client
        self._on_stream = on_stream
        self._wlock = threading.Lock()
        self._lock = threading.Lock()
        self._streams: dict[int, Stream] = {}
        self._next = 1 if client else 2
        self._closed = threading.Event()
        self.close_reason = ""
        self._on_close: list[Callable[[], None]] = []
        self._reader = threading.Thread(target=self._read_loop, name=f"plugbay-{name}-read", daemon=True)
        self._reader.start()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def on_close(self, func: Callable[[], None]) -> None:
        self._on_close.append(func)

    def open(self) -> Stream:
        with self._lock:
            if self._closed.is_set():
                raise StreamClosed(f"the multiplexed connection is closed ({self.close_reason})")
            sid = self._next
            self._next += 2
            stream = Stream(self, sid)
            self._streams[sid] = stream
        self._send(WINDOW_UPDATE, SYN, sid, 0)
        return stream

    @property
    def open_streams(self) -> int:
        """Streams that still carry (or may carry) data."""
        with self._lock:
            return sum(1 for stream in self._streams.values() if not stream.done)

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
            if not self._wlock.acquire(timeout=timeout):
                return False  # a writer is stuck on a full connection
            try:
                header = _HDR.pack(0, PING, SYN, 0, pid)
                sent = self._sock.send(header, socket.MSG_DONTWAIT)
            except OSError:
                return False
            finally:
                self._wlock.release()
            return sent == len(header) and answered.wait(timeout)
        finally:
            with self._lock:
                self._pings.pop(pid, None)

    def forget(self, stream: Stream) -> None:
        with self._lock:
            self._streams.pop(stream.id, None)

    def close(self, reason: str = "closed") -> None:
        if self._closed.is_set():
            return
        try:
            self._send(GO_AWAY, 0, 0, 0)
        except (OSError, StreamClosed):
            pass  # the peer is already gone: nothing to tell it
        self._shutdown(reason)
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout=10)

    def abort(self, reason: str) -> None:
        """Drop the connection without a GoAway (the peer may not be reading)."""
        self._shutdown(reason)
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout=10)

    def _shutdown(self, reason: str) -> None:
        with self._lock:
            if self._closed.is_set():
                return
            self.close_reason = reason
            self._closed.set()
            streams = list(self._streams.values())
            self._streams.clear()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        for stream in streams:
            stream._kill()
        for func in self._on_close:
            func()

    def _send(self, kind: int, flags: int, sid: int, length: int, payload: memoryview | None = None) -> None:
        header = _HDR.pack(0, kind, flags, sid, length)
        with self._wlock:
            if self._closed.is_set():
                raise StreamClosed(f"the multiplexed connection is closed ({self.close_reason})")
            try:
                if payload is None:
                    self._sock.sendall(header)
                else:
                    send_all(self._sock, header, payload)
            except OSError as exc:
                raise StreamClosed(f"the multiplexed connection failed: {exc}") from exc

    def _read_loop(self) -> None:
        reason = "the peer closed the connection"
        reader = FrameReader(self._sock, self._first)
        self._first = b""
        try:
            while True:
                header = reader.read(_HDR.size)
                if len(header) < _HDR.size:
                    break
                version, kind, flags, sid, length = _HDR.unpack(header)
                if version != 0:
                    reason = f"protocol error: yamux version {version}"
                    break
                if kind == DATA:
                    if length > MAX_WINDOW:  # no stream's window is this big: never buffer it
                        reason = f"protocol error: stream {sid} received more than its window"
                        break
                    payload = reader.read(length) if length else b""
                    if len(payload) < length:
                        break
                    problem = self._stream_frame(sid, flags, payload, None)
                    if problem is not None:
                        reason = f"protocol error: {problem}"
                        break
                elif kind == WINDOW_UPDATE:
                    problem = self._stream_frame(sid, flags, None, length)
                    if problem is not None:
                        reason = f"protocol error: {problem}"
                        break
                elif kind == PING:
                    if flags & SYN:
                        self._send(PING, ACK, 0, length)
                    elif flags & ACK:
                        with self._lock:
                            answered = self._pings.get(length)
                        if answered is not None:
                            answered.set()
                elif kind == GO_AWAY:
                    reason = f"the peer went away (code {length})"
                    break
                else:
                    reason = f"protocol error: frame type {kind}"
                    break
        except (OSError, ValueError, StreamClosed) as exc:
            reason = f"connection error: {exc}"
        finally:
            self._shutdown(reason)

    def _stream_frame(self, sid: int, flags: int, payload: bytes | bytearray | None,
                      delta: int | None) -> str | None:
        """Deliver a frame to its stream; a protocol error ends the session (as hashicorp/yamux)."""
        stream: Stream | None
        if flags & SYN:
            if (sid % 2 == 1) == self._client:
                log.debug("yamux: peer opened stream %d of the wrong parity", sid)
                return None
            with self._lock:
                if sid in self._streams:
                    # a second SYN would orphan the first stream's reader
                    return f"stream {sid} opened twice"
                stream = Stream(self, sid)
                self._streams[sid] = stream
            # go's yamux closes the session when an opened stream is not acked in time
            self._send(WINDOW_UPDATE, ACK, sid, 0)
            self._on_stream(stream)
        else:
            with self._lock:
                stream = self._streams.get(sid)
            if stream is None:
                return None  # a late frame for a stream we already dropped
        if payload is not None and not stream._data(payload, flags):
            # a peer that ignores flow control must not make this side buffer without bound
            return f"stream {sid} received more than its window"
        if payload is None:
            stream._window(delta or 0, flags)
        return None
