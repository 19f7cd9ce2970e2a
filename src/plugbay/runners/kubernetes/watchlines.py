"""A watch's streamed answer with a bound on each of its lines (one event each).

The kubernetes client's Watch joins what the API server sends until a newline, however long: a server
(or a proxy in front of it) that sent an endless line without one grew the host's memory for as long
as it sent. Wrapped in :class:`BoundedLines`, the answer's stream ends with a RunnerError once
MAX_EVENT_BYTES came without a newline; the watch's loop then retries, as for a broken connection.

The bound holds only if the answer is read in pieces of our choosing: the client asks urllib3 for
``stream(amt=None)``, which reads a chunk whole, however long the server declared it, and an answer
without chunks or a length (ended by the server's hang-up) whole, to its end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from plugbay.errors import RunnerError

# Far past any object's event: the API server's store (etcd) keeps objects of at most 1.5 MiB by
# default, and an event is one object as JSON.
MAX_EVENT_BYTES = 16 << 20
PIECE = 1 << 16  # the most read from the answer at once


class BoundedLines:
    """``resp`` (urllib3's response to a watch) whose stream() refuses a line past ``limit`` bytes; every
    other attribute is the response's own (the Watch reads its status, closes and releases it)."""

    def __init__(self, resp: Any, what: str, limit: int = MAX_EVENT_BYTES,
                 error: Callable[[str], Exception] = RunnerError) -> None:
        self._resp = resp
        self._what = what
        self._limit = limit
        self._error = error  # the caller's type for a line too long, as it says a broken connection

    def __getattr__(self, name: str) -> Any:
        return getattr(self._resp, name)

    def stream(self, amt: int | None = None, decode_content: bool | None = None) -> Iterator[Any]:
        """The answer in pieces of at most PIECE bytes, whatever ``amt`` the caller asks for."""
        run = 0  # the bytes (a str segment: characters) since the last newline
        for segment in self._pieces(decode_content):
            newline = segment.rfind(b"\n" if isinstance(segment, (bytes, bytearray)) else "\n")
            run = len(segment) - newline - 1 if newline >= 0 else run + len(segment)
            if run > self._limit:
                raise self._error(f"{self._what}: the Kubernetes API sent more than {self._limit} bytes without a"
                                  " newline, more than any watch event holds; the watch is ended and made again."
                                  " Check the API server, and any proxy in front of it")
            yield segment

    def _pieces(self, decode_content: bool | None) -> Iterator[Any]:
        resp = self._resp
        read1 = getattr(resp, "read1", None)  # urllib3 2
        if getattr(resp, "chunked", False) or read1 is None:
            # a chunk's piece is what the chunk holds up to PIECE: an event sent as its own chunk (as the
            # API server sends them) comes at once
            yield from resp.stream(PIECE, decode_content=decode_content)
            return
        while True:  # read1, not read: read(PIECE) waits for PIECE bytes, holding back the events before them
            piece = read1(PIECE, decode_content=decode_content)
            if not piece:
                return
            yield piece
