"""Streams this side closed (sent its FIN) whose peer never closes its own side: reset after a while.

A stream closed one way stays open for the other: its session tracks it, and its bridge keeps the
local connection and, once the peer's bytes have come, a copy loop's thread waiting for the
peer's FIN. A peer that never sends it (stuck, or hostile) would hold all of that for the
session's life, and a peer's held streams count against the streams it may open (yamux.MAX_STREAMS).
hashicorp/yamux bounds it the same way (its StreamCloseTimeout, 5 min by default): once the time
is up, the stream is reset (RST), its waiters woken, and the session forgets it.

One daemon thread serves the whole process, and only while some stream waits: a timer per stream
would cost a thread each, and the session's reader blocks in recv and has no time to keep.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Protocol

log = logging.getLogger("plugbay.yamux")
CLOSE_TIMEOUT = 300.0  # hashicorp/yamux's StreamCloseTimeout default
LOOK = 1.0  # how often the thread looks for streams past their timeout, while any wait


class Closing(Protocol):
    """What the timeout needs of a stream (plugbay.core.transport.ystream.Stream)."""

    def _half_closed_too_long(self) -> None: ...


class HalfClosed:
    """Half-closed streams by their deadline; the thread resets the ones still half-closed at it.

    Neither add() nor drop() wakes the thread (a stream closes both ways on every brokered call: a
    thread wake-up each would cost more than the bookkeeping): it looks every LOOK seconds at most,
    so a stream is reset up to LOOK late, and leaves once it found nothing waiting twice in a row.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        # one queue per timeout: a queue's deadlines then come in the order its streams were added
        self._queues: dict[float, OrderedDict[int, tuple[float, Closing]]] = {}
        self._thread: threading.Thread | None = None

    def add(self, stream: Closing, timeout: float) -> None:
        """Reset ``stream`` in ``timeout`` seconds (up to LOOK later) unless drop() comes first."""
        with self._cond:
            self._queues.setdefault(timeout, OrderedDict())[id(stream)] = (time.monotonic() + timeout, stream)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="plugbay-yamux-close-timeout", daemon=True)
                self._thread.start()

    def drop(self, stream: Closing) -> None:
        """The stream ended both ways (or was reset): no timeout for it."""
        with self._cond:
            for timeout, queue in self._queues.items():
                if queue.pop(id(stream), None) is not None:
                    if not queue:
                        del self._queues[timeout]
                    return

    def _run(self) -> None:
        idle = False
        while True:
            expired: list[Closing] = []
            with self._cond:
                now = time.monotonic()
                wait = LOOK
                for timeout, queue in list(self._queues.items()):
                    while queue:
                        deadline, stream = next(iter(queue.values()))
                        if deadline > now:
                            wait = min(wait, deadline - now)
                            break
                        queue.popitem(last=False)
                        expired.append(stream)
                    if not queue:
                        del self._queues[timeout]
                if not expired:
                    if not self._queues:
                        if idle:
                            self._thread = None  # the next add() starts a thread again
                            return
                        idle = True
                    else:
                        idle = False
                    self._cond.wait(wait)
                    continue
            idle = False
            for stream in expired:  # outside the lock: a reset takes the stream's lock (which holds add's)
                try:
                    stream._half_closed_too_long()
                except Exception:  # one stream's reset must not end the timeouts of every other
                    log.exception("resetting a yamux stream its peer left half-closed failed")


HALF_CLOSED = HalfClosed()
