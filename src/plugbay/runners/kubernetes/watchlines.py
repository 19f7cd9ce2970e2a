"""A watch's streamed answer with a bound on each of its lines (one event each).

The kubernetes client's Watch joins what the API server sends until a newline, however long: a server
(or a proxy in front of it) that sent an endless line without one grew the host's memory for as long
as it sent. Wrapped in :class:`BoundedLines`, the answer's stream ends with a RunnerError once
MAX_EVENT_BYTES came without a newline; the watch's loop then retries, as for a broken connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from plugbay.errors import RunnerError

# Far past any object's event: the API server's store (etcd) keeps objects of at most 1.5 MiB by
# default, and an event is one object as JSON.
MAX_EVENT_BYTES = 16 << 20


class BoundedLines:
    """``resp`` (urllib3's response to a watch) whose stream() refuses a line past ``limit`` bytes; every
    other attribute is the response's own (the Watch reads its status, closes and releases it)."""

    def __init__(self, resp: Any, what: str, limit: int = MAX_EVENT_BYTES) -> None:
        self._resp = resp
        self._what = what
        self._limit = limit

    def __getattr__(self, name: str) -> Any:
        return getattr(self._resp, name)

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        run = 0  # the bytes (a str segment: characters) since the last newline
        for segment in self._resp.stream(*args, **kwargs):
            newline = segment.rfind(b"\n" if isinstance(segment, (bytes, bytearray)) else "\n")
            run = len(segment) - newline - 1 if newline >= 0 else run + len(segment)
            if run > self._limit:
                raise RunnerError(f"{self._what}: the Kubernetes API sent more than {self._limit} bytes without a"
                                  " newline, more than any watch event holds; the watch is ended and made again."
                                  " Check the API server, and any proxy in front of it")
            yield segment
