"""A yamux Stream's sink (plugbay.core.transport.ystream): a bridge's local socket, which the session
reader sends payloads straight to (or splices them into) while nothing is queued before them.
Stream inherits it.
"""

from __future__ import annotations

import os
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from plugbay.core.transport.frames import Chunk, Piped


class Sinking:
    """A Stream's payloads delivered straight to its bridge's socket: no thread hand-off per frame."""

    # the Stream's own state and steps, set and defined there: declared for the type checker
    _cond: threading.Condition
    _buf: deque[Chunk]
    _reset: bool
    _sink: socket.socket | None
    _local: socket.socket | None
    _splice_sink: bool
    _sink_unblocked: bool
    _sending: bool
    _direct: int
    _wake: Callable[[], None] | None
    _end: Callable[[], None] | None

    if TYPE_CHECKING:
        def _drain_needed(self) -> Callable[[], None] | None: ...

    @property
    def splices(self) -> bool:
        """Whether the session reader may splice this stream's payloads (a hint: _data decides)."""
        return self._splice_sink

    def _from_pipe(self, payload: Piped) -> Chunk:
        """Splice what the sink takes now straight from the pipe; the rest comes out to be queued."""
        sink = self._free_sink() if self._splice_sink else None
        if sink is not None:
            try:
                if not self._sink_unblocked:  # the fd only: the bridge's loops wait on it themselves
                    os.set_blocking(sink.fileno(), False)
                    self._sink_unblocked = True
                sent = os.splice(payload.pipe, sink.fileno(), payload.n)
            except BlockingIOError:
                sent = 0  # the local side is not reading: the bridge sends it when it can
            except OSError:
                sent, self._sink = 0, None  # broken: the bridge finds out on its next send
            self._direct += sent
            payload.n -= sent
        return payload.read(payload.n) if payload.n else b""

    def _free_sink(self) -> socket.socket | None:
        """The sink, if a payload may go straight to it now (nothing queued or being sent before it)."""
        return None if self._buf or self._sending or self._reset else self._sink

    def _send_direct(self, data: Chunk) -> int:
        assert self._sink is not None
        try:
            return self._sink.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0  # the local side is not reading: the bridge sends it when it can
        except OSError:
            self._sink = None  # broken: the bridge finds out on its next send
            return 0

    def attach_sink(self, sink: socket.socket | None, wake: Callable[[], None] | None = None,
                    splice: bool = False, end: Callable[[], None] | None = None) -> None:
        """Let the session reader send payloads straight to ``sink`` while none are queued (None: stop).

        The bridge owning ``sink`` must then read with take(), call sent()
        after sending what it got, and detach before closing ``sink``. Given
        ``wake``, the session calls it once, at the first work for that loop
        (bytes the sink did not take, the end of the stream, window to
        return): a callback's stream needs no waiting thread until it ends.
        Given ``end`` too, it is called instead when the stream's end (FIN or
        reset) is that first work and nothing is queued: a callback's stream
        then never wakes a thread for its sink (``end`` must not block).
        With ``splice``, the reader may also splice payloads into ``sink``,
        making its fd non-blocking for that: the bridge's own calls on it
        must then wait for it themselves on BlockingIOError.
        """
        with self._cond:
            self._sink = self._local = sink
            self._splice_sink = splice and sink is not None
            self._sink_unblocked = False
            self._wake = wake if sink is not None else None
            self._end = end if sink is not None else None
            wake_now = self._drain_needed()
        if wake_now is not None:
            wake_now()

    def sent(self) -> None:
        """What take() gave is sent: the reader may send straight to the sink again."""
        with self._cond:
            self._sending = False
