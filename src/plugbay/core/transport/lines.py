"""A plugin's output bytes split into bounded lines, held for their reader (every runner's log stream).

A plugin's stdout and stderr are untrusted: a plugin that writes hundreds of
megabytes without a newline must not grow the host without bound, and
re-joining a growing buffer on every chunk made such a stream quadratic. Like
go-plugin's bufio.Scanner limit, a line is kept up to ``limit`` bytes; the rest
of it, up to the next newline, is counted and dropped, and the line ends with
a ``…[truncated N bytes]`` marker. Each byte is looked at once (linear time)
and at most ``limit`` bytes of an unfinished line are ever held. A line cut so
is a CutLine: its reader knows it was cut without reading the marker, which a
plugin can print too.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable, Iterator

from plugbay.errors import printable

MAX_LINE = 64 * 1024  # go-plugin's bufio.MaxScanTokenSize
# Lines a runner buffers for a reader slower than the plugin (or absent); beyond it the oldest
# unread lines are dropped, so a flooding plugin costs the host at most this many lines.
MAX_BUFFERED = 10_000


def truncated_marker(dropped: int) -> str:
    return f"…[truncated {dropped} bytes]"


class CutLine(str):
    """A line cut at its limit (LineSplitter, cap_line): its text ends with its truncated_marker().

    A str, so it passes through every queue and callback as a line does; its type is what tells
    the host that a first stdout line was cut (no handshake line can follow), not its text.
    """

    __slots__ = ()


def was_cut(line: str) -> bool:
    """Whether a LineSplitter (or cap_line) cut ``line`` at its limit."""
    return isinstance(line, CutLine)


def cap_line(line: str, limit: int = MAX_LINE) -> str:
    """``line`` cut to ``limit`` characters with the marker (for lines split elsewhere)."""
    if len(line) <= limit:
        return line
    return CutLine(line[:limit] + truncated_marker(len(line.encode("utf-8", "replace")) -
                                                   len(line[:limit].encode("utf-8", "replace"))))


class LineSplitter:
    """Feed bytes in, get finished lines out; an unfinished line holds at most ``limit`` bytes.

    ``peak_buffered`` is the most bytes ever held for an unfinished line: the
    bound the tests check, never above ``limit``.

    ``handshake_first``: the stream's first line is a handshake line (a plugin's stdout). If it
    passes ``limit``, it is handed on at once, cut (its marker counts the bytes dropped until then;
    the rest of it is dropped too): no handshake line can follow such output (go-plugin's host
    gives up there too), so its reader must not wait for a newline.
    """

    def __init__(self, limit: int = MAX_LINE, *, handshake_first: bool = False) -> None:
        if limit < 1:
            raise ValueError("a line limit must be at least one byte")
        self.limit = limit
        self._first_pending = handshake_first
        self._skip = False  # dropping the rest of a first line handed on cut
        self._parts: list[bytes] = []
        self._size = 0
        self._dropped = 0
        self.peak_buffered = 0

    @property
    def buffered(self) -> int:
        """Bytes held for the line not finished yet."""
        return self._size

    def feed(self, data: bytes) -> list[str]:
        """The lines ``data`` finishes (without their newline; a trailing CR is dropped)."""
        if not self._size and not self._dropped and not self._skip and len(data) <= self.limit and \
                data.endswith(b"\n"):
            # Whole lines, each within the limit (a log line per call): one decode and one split.
            # b"\n" never occurs inside a UTF-8 sequence, so this decodes each line as _finish() would.
            lines = data.decode("utf-8", "replace").split("\n")
            lines.pop()
            self._first_pending = False
            return [line[:-1] if line.endswith("\r") else line for line in lines]
        out: list[str] = []
        start = 0
        end = len(data)
        while start < end:
            nl = data.find(b"\n", start)
            stop = end if nl < 0 else nl
            if self._skip:
                self._skip, start = nl < 0, stop + 1
                continue
            self._keep(data, start, stop)
            if nl < 0:
                if self._first_pending and self._dropped and not out:
                    out.append(self._finish())
                    self._skip = True
                break
            out.append(self._finish())
            start = nl + 1
        if out:
            self._first_pending = False
        return out

    def flush(self) -> list[str]:
        """At the end of the stream: the last line if it had no newline."""
        if self._size or self._dropped:
            return [self._finish()]
        return []

    def _keep(self, data: bytes, start: int, stop: int) -> None:
        room = self.limit - self._size
        take = min(room, stop - start)
        if take > 0:
            self._parts.append(data[start:start + take])
            self._size += take
            self.peak_buffered = max(self.peak_buffered, self._size)
        self._dropped += (stop - start) - max(take, 0)

    def _finish(self) -> str:
        raw = b"".join(self._parts)
        dropped = self._dropped
        self._parts, self._size, self._dropped = [], 0, 0
        if raw.endswith(b"\r") and not dropped:
            raw = raw[:-1]
        line = raw.decode("utf-8", "replace")
        return CutLine(line + truncated_marker(dropped)) if dropped else line


def split_lines(chunks: Iterable[bytes], limit: int = MAX_LINE,
                splitter: LineSplitter | None = None) -> Iterator[str]:
    """Every line of a stream of byte chunks (the last one even without a newline)."""
    splitter = splitter or LineSplitter(limit)
    for chunk in chunks:
        yield from splitter.feed(chunk)
    yield from splitter.flush()


class LineBuffer:
    """Lines waiting for their reader, at most ``limit``: the oldest go first, and are counted.

    Bounded so that a plugin writing faster than its host reads (or a host not reading) costs the
    host at most ``limit`` lines; the reader is told on ``log`` (the runner's logger) how many it
    missed, once per gap, not once per line, as a flood drops thousands. ``source`` names the
    stream in that warning.
    """

    def __init__(self, source: str, log: logging.Logger, limit: int = MAX_BUFFERED) -> None:
        self.source = source
        self.dropped = 0  # in all
        self._unsaid = 0  # since the reader last took a line
        self._log = log
        self._lines: deque[str] = deque(maxlen=limit)
        self._ended = False
        self._cond = threading.Condition()

    def put(self, line: str) -> None:
        with self._cond:
            if len(self._lines) == self._lines.maxlen:
                self.dropped += 1
                self._unsaid += 1
            self._lines.append(line)
            self._cond.notify_all()

    def end(self) -> None:
        """No more lines: the reader takes those left, then stops (an end is never dropped, as a line
        can be: a reader would wait for it forever)."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    @property
    def ended(self) -> bool:
        return self._ended

    def get(self) -> str | None:
        """The oldest line, once there is one; None when the buffer has ended and is empty."""
        with self._cond:
            self._cond.wait_for(lambda: self._lines or self._ended)
            if not self._lines:
                return None
            line = self._lines.popleft()
            unsaid, self._unsaid = self._unsaid, 0
        if unsaid:  # said before the line it precedes, outside the lock: the writer is not held up
            self._log.warning("%d lines of %s were dropped: the host read them slower than the plugin wrote"
                              " (at most %d wait)", unsaid, printable(self.source), self._lines.maxlen)
        return line

    def qsize(self) -> int:
        with self._cond:
            return len(self._lines)


def drain(buffer: LineBuffer) -> Iterator[str]:
    """Every line ``buffer`` gets, until its end."""
    while (line := buffer.get()) is not None:
        yield line
