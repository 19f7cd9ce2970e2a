"""Copying a yamux stream to a local socket (what grpcio dials or serves) or to another stream."""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
from collections.abc import Callable

from plugbay.core.transport.frames import Chunk, pipe_for_splicing
from plugbay.core.transport.workers import Workers
from plugbay.core.transport.ystream import _CHUNK, WINDOW, Stream, StreamClosed

_log = logging.getLogger("plugbay.yamux")

_BULK = 64 * 1024  # a read this big: the local side sends in bulk, splice from now on
# the up loop's first buffer: a stream that never carries bulk (most; and every one a peer opens
# only to hold) never pays for the big one, which is zero-filled, so resident, when made
_FIRST_BUF = 16 * 1024
# how long a bridge whose local side is gone waits for both FINs before it resets the stream
_QUIET_END = 1.0


def bridge(stream: Stream, conn: socket.socket, workers: Workers,
           done: Callable[[], None] = lambda: None) -> None:
    """Copy bytes between ``stream`` and the local socket ``conn`` until both sides end.

    The two copy loops run on ``workers``; once those are closed, RuntimeError
    (the stream is reset and ``conn`` closed). ``done`` runs once, when the
    bridge has ended (conn closed), or before that RuntimeError.
    """
    state = {"open": 2}
    lock = threading.Lock()
    # a plain blocking local socket carries bulk by splice(2) both ways; the session reader,
    # which must never wait on it, makes its fd non-blocking once it splices into it (the
    # loops below then wait for it themselves: poll)
    plain = stream.session.can_splice and conn.gettimeout() is None
    try:
        # room for half a window in the local socket (the kernel doubles what it is told):
        # the session reader then sends nearly every payload straight to it, and the down
        # loop (a thread wake-up per payload) is needed only while gRPC's reader lags
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, WINDOW)
    except OSError:
        pass  # the default buffer works too, with more hand-offs to the down loop

    def finish() -> None:
        with lock:
            state["open"] -= 1
            last = state["open"] == 0
        if last:
            stream.session.forget(stream)
            stream.attach_sink(None)  # the session reader no longer sends to conn
            conn.close()
            done()

    def up() -> None:  # local -> peer
        # bulk bytes are spliced (the kernel moves them from conn through a pipe into the
        # session's socket, no copy into or out of this process); small ones (calls, window
        # updates) keep one recv and one send each, and a connection that never carries
        # bulk never makes a pipe
        bulk = plain
        pipe: tuple[int, int, int] | None = None
        buf = memoryview(bytearray(_FIRST_BUF))  # reused: write() has sent it all when it returns
        try:
            while True:
                try:
                    if pipe is not None:
                        n = os.splice(conn.fileno(), pipe[1], pipe[2])
                    else:
                        n = conn.recv_into(buf)
                except BlockingIOError:
                    _wait(conn, select.POLLIN)
                    continue
                if not n:
                    try:
                        stream.close_write()
                    except StreamClosed:
                        pass
                    break
                if pipe is not None:
                    stream.write_piped(pipe[0], n)
                    continue
                stream.write(buf[:n])
                if n == len(buf) < _CHUNK:  # filled: more is coming, in reads as big as a window
                    buf = memoryview(bytearray(_CHUNK))
                if bulk and n >= _BULK:
                    pipe, bulk = pipe_for_splicing(), False
        except (OSError, StreamClosed):
            stream.reset()
            _shut(conn)
        finally:
            if pipe is not None:
                os.close(pipe[0])
                os.close(pipe[1])
            finish()

    def down() -> None:  # peer -> local: what the session reader could not send straight to conn
        # started by the session reader at the first work (often only the end of the stream);
        # once started it stays: a stream whose local reader lags keeps needing it
        try:
            while True:
                data, returned = stream.take()
                if data is None or (returned and not stream._local_fin):
                    # window returned at once keeps a bulk sender going; once the local side has
                    # finished it waits for the send (a peer done with the stream would not know it)
                    stream.consumed(returned)
                    returned = 0
                if data is None:
                    continue
                if not data:
                    # a FIN means the peer's bytes are complete even if a reset followed; a reset
                    # alone aborts the stream: the up loop must stop reading the local side too
                    if stream._remote_fin or not stream._reset:
                        _shut(conn, socket.SHUT_WR)
                    else:
                        _shut(conn)
                    break
                try:
                    _send_all(conn, data)
                except OSError:
                    if not _ended_both_ways(stream):
                        raise
                    # the peer's last bytes (a TLS close_notify) had no reader left: dropped, and
                    # no window returned (a frame the peer, done with the stream, would not know)
                    break
                finally:
                    stream.sent()
                stream.consumed(returned + len(data))
        except (OSError, StreamClosed):
            stream.reset()
            _shut(conn)
        finally:
            finish()

    def ended() -> None:  # the down loop's end, when that is all there is for it (see Stream.attach_sink)
        # on the session reader (or whoever ended the stream): a shutdown never blocks
        _shut(conn, socket.SHUT_WR if stream._remote_fin or not stream._reset else socket.SHUT_RDWR)
        try:
            finish()
        except Exception:  # one bridge's end must not end the reader, and with it every stream of the session
            _log.exception("ending a bridged yamux stream failed")

    def wake() -> None:  # the down loop starts once there is work (see Stream.attach_sink)
        try:
            workers.run(down)
        except RuntimeError:  # closing: nothing carries the stream any more
            _shut(conn)  # the up loop ends and, with this finish(), closes conn
            finish()

    try:
        workers.run(up)
    except RuntimeError:  # closed: nothing runs, nothing carries the stream
        stream.reset()
        conn.close()
        done()
        raise
    stream.attach_sink(conn, wake, splice=plain, end=ended)


def splice(a: Stream, b: Stream, threads: set[threading.Thread], lock: threading.Lock,
           done: Callable[[], None] = lambda: None) -> None:
    """Copy bytes both ways between streams of two sessions until both directions end.

    A FIN is passed on as a FIN, a reset as a reset (a proxy between two yamux peers).
    ``done`` runs once, when both directions have ended.
    """
    state = {"open": 2}

    def copy(src: Stream, dst: Stream) -> None:
        try:
            while True:
                data = src.read()
                if not data:
                    # (Stream.done is true for any reset stream: it cannot tell an abort from an end)
                    if src._remote_fin or not src._reset:
                        dst.close_write()
                    else:
                        dst.reset()  # an aborted upload must not reach the far side as complete
                    break
                dst.write(data)
                src.consumed(len(data))
        except StreamClosed:
            src.reset()
            dst.reset()
        finally:
            with lock:
                state["open"] -= 1
                last = state["open"] == 0
                threads.discard(threading.current_thread())
            if last:
                a.session.forget(a)
                b.session.forget(b)
                done()

    for src, dst in ((a, b), (b, a)):
        t = threading.Thread(target=copy, args=(src, dst), name=f"plugbay-splice-{src.id}", daemon=True)
        with lock:
            threads.add(t)
        t.start()


def _ended_both_ways(stream: Stream) -> bool:
    """Whether, the local side gone, the stream ends with a FIN each way (soon: _QUIET_END).

    Then bytes the local side can no longer take need no reset: hashicorp/yamux has dropped a
    stream closed both ways, and logs a reset that comes after as a frame for a missing stream.
    """
    with stream._cond:
        stream._cond.wait_for(lambda: (stream._local_fin and stream._remote_fin) or stream._reset, _QUIET_END)
        return stream._local_fin and stream._remote_fin and not stream._reset


def _send_all(conn: socket.socket, data: Chunk) -> None:
    """sendall() that also waits on a non-blocking socket (see bridge())."""
    view = memoryview(data)
    while view:
        try:
            view = view[conn.send(view):]
        except BlockingIOError:
            _wait(conn, select.POLLOUT)


def _wait(conn: socket.socket, event: int) -> None:
    """Until ``conn`` is ready for ``event`` (or shut down, or broken: the next call says which)."""
    poller = select.poll()
    poller.register(conn.fileno(), event)
    poller.poll()


def _shut(conn: socket.socket, how: int = socket.SHUT_RDWR) -> None:
    try:
        conn.shutdown(how)
    except OSError:
        pass
