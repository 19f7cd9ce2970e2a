"""Moving yamux frames through a socket with few copies and few system calls (for yamux.Session)."""

from __future__ import annotations

import fcntl
import os
import select
import socket
import time
from collections.abc import Callable

_READ = 256 * 1024  # a session reader's buffer refill, while the peer sends in bulk
_SMALL = 16 * 1024  # ... and while it sends small frames (a buffer a queued payload pins: keep it small)
_DIRECT = 64 * 1024  # payloads this big are received straight into their own buffer
# A payload at least this big is handed out as a view of the refill buffer it arrived in
# (no copy); a smaller one is copied out, so a stream's queue of small payloads never pins
# whole refill buffers (at most _READ / _SHARE times the bytes it holds).
_SHARE = _READ // 4
_BULK_SMALL = 8  # small payloads in a row after which a bulk peer is read ahead again
_PIPE = 256 * 1024  # a splicing pipe's size: a bridge chunk, a window
# Refill buffers a reader keeps: its stream's reader still holds payload views of the last few
# while the next refill comes, and a fresh buffer per refill (zero-filled, page faults: about as
# much as the receive itself) was most of a bulk reader's time; four of _READ: a stream's window.
# So a session's reader keeps up to 4 x 256 KiB once bulk data has flowed, for the session's life
# (trimming them when traffic turns small would put the fresh buffers back into bulk reads, whose
# reads come in all sizes).
_KEPT = 4

Chunk = bytes | bytearray | memoryview  # what a stream reads: large payloads as received, not copied


class FrameReader:
    """Reads exactly n bytes off the session's socket (fewer only at its end).

    Small reads (headers, small frames) come out of a buffer filled by large
    recv calls; a large payload found there is handed out as a view, not
    copied, and the buffer is written again only once no such view is alive
    (a fresh buffer per refill cost page faults and zero-filling); a large
    payload not yet received is received straight into its own buffer in one
    call (MSG_WAITALL): one release of the GIL per frame, one copy.
    """

    def __init__(self, sock: socket.socket, first: bytes) -> None:
        self._sock = sock
        self._buf = memoryview(bytearray(first))  # the current refill; bytes from _pos on are unread
        self._raws: list[bytearray] = []  # refill buffers, the last used first (reused once no payload view is alive)
        self._pos = 0
        self._size = _SMALL  # the next refill's buffer: grows while recv fills it, shrinks when not
        # _read_direct's buffer, reused while its payloads leave at once (recycle()): a large
        # frame then costs no allocation and no zero-filling, just the recv
        self._spare: bytearray | None = None
        self._lent: bytearray | None = None
        # the peer sends large frames: headers and small payloads are read exactly (not ahead),
        # so a large payload is still in the socket when its header is read (spliced onwards,
        # or received whole); _small counts the small payloads since the last large one
        self._bulk = False
        self._small = 0

    def header(self, n: int) -> bytes | bytearray | memoryview:
        """The next ``n`` header bytes (exactly those while the peer sends in bulk)."""
        self._lent = None  # a new frame: the last payload's buffer is its stream's now, or recycled
        if self._bulk and self._pos == len(self._buf):
            return self._read_exact(n)
        return self.read(n)

    def _read_exact(self, n: int) -> bytes | bytearray:
        out = bytearray(n)
        view = memoryview(out)
        have = 0
        while have < n:
            got = self._sock.recv_into(view[have:], n - have, socket.MSG_WAITALL)
            if not got:
                return out[:have]
            have += got
        return out

    def buffered(self) -> int:
        """Bytes received ahead of what was read."""
        return len(self._buf) - self._pos

    def spliced(self) -> None:
        """A payload was taken off the socket by splice(2) (a large one: the peer sends in bulk)."""
        self._bulk, self._small = True, 0

    def read(self, n: int) -> bytes | bytearray | memoryview:
        self._lent = None  # recycle() frees only the buffer of the read just before it
        have = len(self._buf) - self._pos
        if have < n:
            if n - have >= _DIRECT:
                return self._read_direct(n)
            if self._bulk and not have and self._small < _BULK_SMALL:
                self._small += 1
                return self._read_exact(n)
            self._bulk = False  # small frames only: read ahead again, many per recv
            if not self._refill(n):
                n = len(self._buf) - self._pos  # the connection ended: what is left
        start, self._pos = self._pos, self._pos + n
        if n >= _SHARE:
            return self._buf[start:self._pos]
        return bytes(self._buf[start:self._pos])

    def split(self, n: int) -> memoryview | None:
        """The received part of an ``n``-byte payload, as a view, if it is large and incomplete
        (None otherwise): the caller reads the rest with read() and passes the payload on in
        two pieces, instead of read() moving the received part into one buffer with the rest."""
        have = len(self._buf) - self._pos
        if have >= n or have < _SHARE:
            return None
        head = self._buf[self._pos:]
        self._buf, self._pos = memoryview(b""), 0
        return head

    def _refill(self, n: int) -> bool:
        """Move the unread bytes into a buffer no payload refers to and receive until it holds ``n``."""
        rest = bytes(self._buf[self._pos:])  # short: a partial header or small frame (split() takes more)
        self._buf = memoryview(b"")  # our own view: gone, so _reusable sees only the payloads'
        buf = self._free_buffer(max(self._size, n))
        have = len(rest)
        buf[:have] = rest
        self._buf, self._pos = memoryview(buf), 0
        while have < n:
            space = len(self._buf) - have
            got = self._sock.recv_into(self._buf[have:])
            if not got:
                self._buf = self._buf[:have]
                return False
            have += got
            self._size = _READ if got == space else max(_SMALL, min(_READ, 2 * got))
        self._buf = self._buf[:have]
        return True

    def _free_buffer(self, size: int) -> bytearray:
        """A kept refill buffer of at least ``size`` bytes that no payload refers to, or a new one:
        fresh (zero-filled, page faults) only when it must be."""
        for i, buf in enumerate(self._raws):
            if len(buf) >= size and _reusable(buf):
                if i:
                    self._raws.insert(0, self._raws.pop(i))
                return buf
        buf = bytearray(size)
        self._raws = [buf, *self._raws[:_KEPT - 1]]
        return buf

    def _read_direct(self, n: int) -> bytearray | memoryview:
        out = self._spare if self._spare is not None and len(self._spare) >= n else bytearray(n)
        self._spare, self._lent = None, out
        self._bulk, self._small = True, 0
        have = len(self._buf) - self._pos
        out[:have] = self._buf[self._pos:]
        self._buf, self._pos = memoryview(b""), 0
        view = memoryview(out)
        while have < n:
            got = self._sock.recv_into(view[have:], n - have, socket.MSG_WAITALL)
            if not got:
                break  # the connection ended inside the payload: the caller sees it short
            have += got
        return view[:have]

    def recycle(self) -> None:
        """The last payload read is gone (nothing refers to it any more): reuse its buffer."""
        if self._lent is not None:
            self._spare, self._lent = self._lent, None


def _reusable(buf: bytearray) -> bool:
    """Whether no view of ``buf`` is alive (a stream may still queue a payload handed out as one).

    A bytearray refuses to change size while any buffer export of it lives:
    the one exact test Python offers.
    """
    try:
        buf.append(0)
    except BufferError:
        return False
    del buf[-1]
    return True


# A session socket's SO_SNDTIMEO is its write timeout over this (ywrite.set_write_timeout): a blocking
# send into a socket whose peer takes nothing returns that often, and the sender counts the time since
# the peer last took a byte (keep_sending). The kernel cannot count it alone: a send that made some
# progress returns short at its timeout, and the next one would wait a whole timeout again (twice the
# figure before the error), and TCP counts a send's waits in total, however many bytes went between.
SLICES = 8


def keep_sending(send: Callable[[int], int], n: int, limit: float, last: float) -> float:
    """Call ``send(done)`` (a blocking send of the bytes from ``done`` on, into a socket whose
    SO_SNDTIMEO is ``limit`` / SLICES; it returns how many went) until ``n`` bytes went.

    BlockingIOError once no byte went for ``limit`` seconds since ``last`` (time.monotonic(), the
    last progress); returns the time of the last progress. A send that took bytes counts from its
    return: they may have gone at any moment of it.
    """
    done = 0
    while done < n:
        try:
            done += send(done)
        except BlockingIOError:
            if time.monotonic() - last >= limit:
                raise
            continue
        last = time.monotonic()
    return last


def send_all(sock: socket.socket, header: bytes, payload: memoryview | None, limit: float, flags: int = 0) -> None:
    """Header and payload in one system call where the socket takes them (no copy into one buffer).

    BlockingIOError once the peer took no byte for ``limit`` seconds (``sock``'s SO_SNDTIMEO is
    ``limit`` / SLICES: see keep_sending).
    """
    try:
        sent = sock.send(header, flags) if payload is None else sock.sendmsg([header, payload], [], flags)
    except BlockingIOError:
        sent, last = 0, time.monotonic() - limit / SLICES  # the send waited that long, for nothing
    else:
        if sent == len(header) + (0 if payload is None else len(payload)):
            return
        last = time.monotonic()
    if sent < len(header):
        head = memoryview(header)[sent:]
        last = keep_sending(lambda done: sock.send(head[done:], flags), len(head), limit, last)
        sent = len(header)
    if payload is not None and sent - len(header) < len(payload):
        body = payload[sent - len(header):]
        keep_sending(lambda done: sock.send(body[done:], flags), len(body), limit, last)


def send_within(sock: socket.socket, data: bytes, deadline: float) -> int:
    """Send ``data``, waiting for room no later than ``deadline`` (time.monotonic()); the bytes sent.

    A full socket is waited for with poll(), not a socket timeout: the socket stays
    blocking for the thread that reads it. OSError if the connection is broken.
    """
    sent = 0
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    while sent < len(data):
        try:
            sent += sock.send(data[sent:], socket.MSG_DONTWAIT)
            continue
        except BlockingIOError:
            pass
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            break
    return sent


class Piped:
    """A payload the session reader spliced off its socket into ``pipe`` (``n`` bytes wait there)."""

    def __init__(self, pipe: int, n: int) -> None:
        self.pipe = pipe
        self.n = n

    def __len__(self) -> int:
        return self.n

    def read(self, n: int) -> bytearray:
        """The next ``n`` bytes out of the pipe (copied into this process: a sink that cannot take them)."""
        out = bytearray(n)
        view, have = memoryview(out), 0
        while have < n:
            got = os.readv(self.pipe, [view[have:]])
            if not got:
                raise OSError("the pipe ended inside a payload")
            have += got
        self.n -= n
        return out


def pipe_for_splicing() -> tuple[int, int, int] | None:
    """A pipe for splicing bytes between sockets (read end, write end, how much one splice moves), or None."""
    try:
        r, w = os.pipe2(os.O_CLOEXEC)
    except OSError:
        return None
    try:
        size = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, _PIPE)
    except OSError:  # over the user's pipe quota: the default size moves less per frame
        size = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
    return r, w, min(size, _PIPE)
