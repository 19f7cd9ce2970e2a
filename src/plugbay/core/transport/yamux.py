"""A yamux session (hashicorp/yamux's wire format), bridged to local sockets.

go-plugin's multiplexed broker runs a yamux session over the one connection
to the plugin's announced address; the main gRPC connection and every
brokered connection are streams of it. grpcio cannot speak over a Python
object, so each stream is *bridged*: bytes flow between the stream and a
plain local unix-socket connection that gRPC dials or serves on. Bulk bytes
cross a bridge by splice(2) where both sockets are plain (never TLS): the
kernel moves them through a pipe, and this process copies only the headers.

Frame: version(0) type flags(2) stream-id(4) length(4), big endian.
Types: Data, WindowUpdate, Ping, GoAway. Flags: SYN, ACK, FIN, RST. Client
streams are odd, server streams even; each stream starts with a 256 KiB
receive window, so a slow reader stops its sender (backpressure) instead of
growing buffers.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from plugbay.core.transport.frames import Chunk, FrameReader, Piped, send_within
from plugbay.core.transport.sockets import shutdown_and_join
from plugbay.core.transport.yadmit import MAX_STREAMS, Admitting, stream_cap
from plugbay.core.transport.yclose import CLOSE_TIMEOUT, OPEN_TIMEOUT
from plugbay.core.transport.ylate import LateControl
from plugbay.core.transport.yping import Pinging
from plugbay.core.transport.yrefuse import refusal_reason
from plugbay.core.transport.ysplice import Splicing
from plugbay.core.transport.ywrite import WRITE_TIMEOUT, Writing, check_write_timeout, set_write_timeout
from plugbay.core.transport.ystream import (
    _CHUNK,
    _HDR,
    ACK,
    DATA,
    FIN,
    GO_AWAY,
    MAX_WINDOW,
    PING,
    RST,
    SYN,
    WINDOW,
    WINDOW_UPDATE,
    Stream,
    StreamClosed,
)
from plugbay.errors import NoNewStreamsError

# the stream's names, and the stream cap's, are ours too
__all__ = ["ACK", "DATA", "FIN", "GO_AWAY", "MAX_STREAMS", "MAX_WINDOW", "PING", "RST", "SYN", "WINDOW",
           "WINDOW_UPDATE", "_CHUNK", "_HDR", "Chunk", "Session", "Stream", "StreamClosed"]

log = logging.getLogger("plugbay.yamux")
_SPLICE_MIN = 64 * 1024  # a payload this big, for a stream whose sink can take it, is spliced
_CLOSE_WAIT = 2.0  # close() waits this long to send its GoAway (a writer stuck on a peer that does not read)
# hashicorp/yamux opens no stream at an id this high (ErrStreamsExhausted); 2**32-1 would not even
# fit the header on the next round, and a Go peer refuses it
_LAST_ID = 0xFFFFFFFE
_GO_AWAY_PROTOCOL = 1
_GO_AWAY_NORMAL = 0  # the other codes (1 protocol error, 2 internal error) mean the session failed
_GO_AWAY_CODES = {1: "protocol error", 2: "internal error"}
PROTOCOL_ERROR = "protocol error"  # how the reason of a session the peer broke the protocol on starts
PEER_FAILED = "the peer went away with an error"  # ... of one the peer ended with a GoAway error code


def failed_by_peer(reason: str) -> bool:
    """Whether a session that ended for ``reason`` ended for the peer's fault: a protocol error, or a
    GoAway with an error code. Logged at WARNING, as hashicorp/yamux logs them at ERR: nothing
    else tells why every stream of the connection broke at once."""
    return reason.startswith((PROTOCOL_ERROR, PEER_FAILED))


class Session(Splicing, Pinging, Writing, Admitting):
    """A yamux session over ``sock``; ``on_stream`` is told about streams the peer opens.

    ``on_stream`` runs on the reader thread, so routing decisions follow the
    order of frames on the wire; it must not block. A frame that cannot be
    written for ``write_timeout`` seconds ends the session (see ywrite).
    """

    def __init__(self, sock: socket.socket, *, client: bool, on_stream: Callable[[Stream], None],
                 name: str = "mux", first: bytes = b"", start: bool = True,
                 write_timeout: float = WRITE_TIMEOUT) -> None:
        self._sock = sock
        self.name = name
        self.write_timeout = check_write_timeout(write_timeout)
        try:
            set_write_timeout(sock, self.write_timeout)
        except OSError:
            pass  # a socket already broken: the reader finds out
        self._first = first  # bytes already read off ``sock`` (an admission check's first header)
        self._pings: dict[int, threading.Event] = {}
        self._ping_id = 0
        self._client = client
        self._on_stream = on_stream
        self._wlock = threading.Lock()
        self._lock = threading.Lock()
        self._streams: dict[int, Stream] = {}
        self._next = 1 if client else 2
        self._next_prune = 0.0  # see _admits
        self.max_streams = stream_cap()  # the streams the peer may have open at once (read once: a syscall)
        self._refusing = False  # the peer reached max_streams (logged once)
        self._went_away = False  # the peer sent a normal GoAway: it takes no new streams
        # a stream closed this way is reset once the peer has not closed its side for this long, and the
        # session dropped once the peer has not acknowledged a stream opened here for this long (yclose)
        self.stream_close_timeout = CLOSE_TIMEOUT
        self.stream_open_timeout = OPEN_TIMEOUT
        self._closed = threading.Event()
        self.close_reason = ""
        self._ended_by: type[StreamClosed] = StreamClosed  # what its end raises in callers
        self._pipe: tuple[int, int, int] | None = None  # the reader's, for splicing payloads (see _splice_frame)
        self._kept = False  # the reader's last payload was queued by its stream (not sent on at once)
        self.heard = 0  # frames read so far: a keepalive's sign of life (plugbay.core.transport.keepalive)
        self.answered = False  # an ACK arrived (of a stream or a ping): a yamux peer is really there
        # what the reader cannot send at once
        self._late = LateControl(sock, self._wlock, self._closed, name, self._write_timed_out, self.write_timeout)
        self._reader = threading.Thread(target=self._read_loop, name=f"plugbay-{name}-read", daemon=True)
        if start:
            self._reader.start()

    def start(self) -> None:
        """Start reading (a session made with ``start=False``: its owner first put it in place, so
        that the peer's first stream is routed knowing it)."""
        try:
            self._reader.start()
        except RuntimeError:  # no thread to be had: nothing would ever close the socket
            self._shutdown("no thread to read the connection")
            self._sock.close()
            raise

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def open(self) -> Stream:
        with self._lock:
            if self._closed.is_set():
                raise self._closed_error()
            if self._went_away:
                raise NoNewStreamsError("the peer sent a GoAway: it takes no new streams on this multiplexed"
                                        " connection (it is shutting down); connect again (restart the plugin)")
            sid = self._next
            if sid >= _LAST_ID:
                raise NoNewStreamsError("this multiplexed connection has used up its yamux stream ids; connect"
                                        " again (restart the plugin) for more streams")
            self._next += 2
            stream = Stream(self, sid)
            self._streams[sid] = stream
        stream._await_ack()
        self._send(WINDOW_UPDATE, SYN, sid, 0)
        return stream

    def _not_acknowledged(self, stream: Stream) -> None:
        """The peer did not acknowledge a stream opened here within stream_open_timeout: it reads (it may
        answer pings) but accepts no stream, so none opened on this session would ever be served."""
        if self.closed:
            return
        reason = (f"the peer did not acknowledge stream {stream.id} within {self.stream_open_timeout:g} s (it"
                  " accepts no new stream); the connection is dropped")
        log.warning("%s: %s", self.name, reason)
        self.abort(reason, join=False)  # its reader closes the socket; this thread serves other sessions

    @property
    def open_streams(self) -> int:
        """Streams that still carry (or may carry) data."""
        with self._lock:
            return sum(1 for stream in self._streams.values() if not stream.done)

    def forget(self, stream: Stream) -> None:
        with self._lock:
            if self._streams.get(stream.id) is stream:  # not a later stream the peer gave the same id
                del self._streams[stream.id]

    def close(self, reason: str = "closed") -> None:
        if self._closed.is_set():
            if threading.current_thread() is not self._reader and self._reader.is_alive():
                self._reader.join(timeout=10)  # ended by abort(join=False): its owner now waits for it
            return
        # the GoAway is a courtesy: a writer stuck on a peer that does not read holds the send
        # lock, and the socket may be full; past the wait, the connection just ends (as abort())
        deadline = time.monotonic() + _CLOSE_WAIT
        if self._wlock.acquire(timeout=_CLOSE_WAIT):
            try:
                # after the headers the reader queued (a stream's ACK must not be lost behind it)
                header = self._late.take() + _HDR.pack(0, GO_AWAY, 0, 0, 0)
                if not self._closed.is_set() and send_within(self._sock, header, deadline) < len(header):
                    shutdown_and_join([self._sock], [])  # half a frame may be out: none may follow it
            except OSError:
                pass  # the peer is already gone: nothing to tell it
            finally:
                self._wlock.release()
        self._shutdown(reason)
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout=10)

    def abort(self, reason: str, join: bool = True) -> None:
        """Drop the connection without a GoAway (the peer may not be reading); ``join``: wait
        (bounded) for the reader thread to end, which closes the socket."""
        self._shutdown(reason)
        if join and threading.current_thread() is not self._reader:
            self._reader.join(timeout=10)

    def _shutdown(self, reason: str) -> None:
        self._end(reason, StreamClosed)()

    def _end(self, reason: str, error: type[StreamClosed]) -> Callable[[], None]:
        """Mark the session ended and shut its socket; the returned step ends its streams (after
        any send lock the caller holds is released: ending a stream may wake a bridge that sends)."""
        with self._lock:
            if self._closed.is_set():
                return lambda: None
            self.close_reason, self._ended_by = reason, error
            self._closed.set()
            streams = list(self._streams.values())
            self._streams.clear()
        shutdown_and_join([self._sock], [])  # the raw socket, never TLS first (see there)
        if failed_by_peer(reason):
            log.warning("%s: %s; the connection is dropped (%d streams ended)", self.name, reason, len(streams))

        def end_streams() -> None:
            for stream in streams:  # the reader closes the socket (see _read_loop)
                stream._kill(error)
        return end_streams

    def _read_loop(self) -> None:
        reason = "the peer closed the connection"
        go_away = False  # a stream broke the protocol: the peer is told, as hashicorp/yamux tells it
        reader = FrameReader(self._sock, self._first)
        self._first = b""
        try:
            while True:
                header = reader.header(_HDR.size)
                if len(header) < _HDR.size:
                    break
                version, kind, flags, sid, length = _HDR.unpack(header)
                if version != 0:
                    reason = f"protocol error: yamux version {version}"
                    break
                self.heard += 1
                if flags & ACK:
                    self.answered = True
                if kind == DATA:
                    if length > MAX_WINDOW:  # no stream's window is this big: never buffer it
                        reason, go_away = f"protocol error: stream {sid} received more than its window", True
                        break
                    known = self._known(sid, flags)
                    window = known.receive_window if known is not None else WINDOW if flags & SYN else length
                    if length > window:  # a stream's SYN frame has a new stream's window
                        # as hashicorp/yamux: refused at its header, before its body is read (a peer
                        # must not hold the reader, or this side's memory, with what it may not send)
                        reason, go_away = f"protocol error: stream {sid} received more than its window", True
                        break
                    spliced = self._splices_to(known) if length >= _SPLICE_MIN and not reader.buffered() else None
                    if spliced is not None:
                        problem = self._splice_frame(spliced, flags, length)
                        if problem is not None:
                            reason, go_away = problem, problem.startswith("protocol error")
                            break
                        reader.spliced()
                        continue
                    head = reader.split(length)  # received already: passed on as it is, not moved
                    if head is not None:
                        length -= len(head)
                        problem = self._stream_frame(sid, flags & ~(FIN | RST), head, None)
                        del head
                        if problem is not None:
                            reason, go_away = f"protocol error: {problem}", True
                            break
                        flags &= ~(SYN | ACK)  # the frame's rest: the same stream's data
                    payload = reader.read(length) if length else b""
                    if len(payload) < length:
                        break
                    problem = self._stream_frame(sid, flags, payload, None)
                    if problem is not None:
                        reason, go_away = f"protocol error: {problem}", True
                        break
                    if length and not self._kept:  # an empty frame read nothing: nothing to recycle
                        del payload  # the last reference: its buffer is free for the next frame
                        reader.recycle()
                elif kind == WINDOW_UPDATE:
                    problem = self._stream_frame(sid, flags, None, length)
                    if problem is not None:
                        reason, go_away = f"protocol error: {problem}", True
                        break
                elif kind == PING:
                    if flags & SYN:
                        self._control(PING, ACK, 0, length)
                    elif flags & ACK:
                        with self._lock:
                            answered = self._pings.get(length)
                        if answered is not None:
                            answered.set()
                elif kind == GO_AWAY:
                    refusal = refusal_reason(length)  # a plugbay front's: a cap reached, not a failure
                    if refusal is not None:
                        reason = refusal
                        break
                    if length != _GO_AWAY_NORMAL:
                        what = _GO_AWAY_CODES.get(length, "an unknown code")
                        reason = f"{PEER_FAILED} (GoAway code {length}: {what})"
                        break
                    # as hashicorp/yamux: a peer shutting down finishes the streams it has open
                    # (Go's Session.GoAway() then keeps the connection); only new ones are refused
                    with self._lock:
                        self._went_away = True
                else:
                    reason = f"protocol error: frame type {kind}"
                    break
        except (OSError, ValueError, StreamClosed) as exc:
            reason = f"connection error: {exc}"
        finally:
            try:
                if go_away:  # best effort, as Go's sendNoWait: a busy send lock or a full socket skips it
                    self._try_send(GO_AWAY, 0, 0, _GO_AWAY_PROTOCOL)
                self._shutdown(reason)
            finally:
                # closed here only, by the thread that reads it, under the send lock: splices name
                # the socket by its descriptor number, which a close elsewhere could give to a new
                # socket while one of them is about to use it (its bytes read, or written, there)
                self._late.join(10)  # its send fails at once on the shut socket
                with self._wlock:
                    self._sock.close()
                if self._pipe is not None:
                    os.close(self._pipe[0])
                    os.close(self._pipe[1])

    def _stream_frame(self, sid: int, flags: int, payload: Chunk | Piped | None,
                      delta: int | None) -> str | None:
        """Deliver a frame to its stream; a protocol error ends the session (as hashicorp/yamux)."""
        stream: Stream | None
        self._kept = False
        if flags & SYN:
            if sid == 0 or (sid % 2 == 1) == self._client:  # ids are the opener's by parity; 0 is the session's
                return f"stream {sid} opened by the wrong side"
            with self._lock:
                if self._closed.is_set():
                    # a frame read before the session ended: its stream would never be reset
                    return None
                if sid in self._streams:
                    # a second SYN would orphan the first stream's reader
                    return f"stream {sid} opened twice"
                stream = Stream(self, sid) if self._admits() else None
                if stream is not None:
                    self._streams[sid] = stream
            if stream is None:
                self._control(WINDOW_UPDATE, RST, sid, 0)  # its later frames find no stream: dropped
                return None
            # go's yamux closes the session when an opened stream is not acked in time
            self._control(WINDOW_UPDATE, ACK, sid, 0)
            if self._closed.is_set():  # the ACK could not go (see _control): nothing to route it on
                return None
            self._on_stream(stream)
        else:
            with self._lock:
                stream = self._streams.get(sid)
            if stream is None:
                return None  # a late frame for a stream we already dropped
        if payload is not None:
            ok, self._kept = stream._data(payload, flags)
            if not ok:
                # a peer that ignores flow control must not make this side buffer without bound
                return f"stream {sid} received more than its window"
        if payload is None:
            stream._window(delta or 0, flags)
        if flags & RST or (flags & FIN and stream._local_fin):
            self.forget(stream)  # reset or closed both ways: later frames are dropped (as hashicorp/yamux)
        return None
