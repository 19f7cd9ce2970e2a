"""A yamux stream's two timeouts, as hashicorp/yamux's (newer than go-plugin 1.0.1's, which has neither).

Close: a stream this side closed (sent its FIN) stays open for the other way: its session tracks
it, and its bridge keeps the local connection and, once the peer's bytes have come, a copy loop's
thread waiting for the peer's FIN. A peer that never sends it (stuck, or hostile) would hold all
of that for the session's life, and a peer's held streams count against the streams it may open
(yamux.MAX_STREAMS). As StreamCloseTimeout (5 min by default): once the time is up, the stream is
reset (RST), its waiters woken, and the session forgets it.

Open: a stream this side opened that the peer does not acknowledge (ACK) means a peer whose
reader runs (it answers pings, so the keepalive keeps it) but whose accept loop does not: no
stream opened on the session would ever be served, and its calls would wait for their deadlines.
As StreamOpenTimeout (75 s by default): the session is dropped, and the next call dials again.

One daemon thread serves the whole process, and only while some stream waits: a timer per stream
would cost a thread each, and the session's reader blocks in recv and has no time to keep.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

log = logging.getLogger("plugbay.yamux")
CLOSE_TIMEOUT = 300.0  # hashicorp/yamux's StreamCloseTimeout default
OPEN_TIMEOUT = 75.0  # ... and its StreamOpenTimeout
LOOK = 1.0  # how often the thread looks for streams past their timeout, while any wait


class StreamTimers:
    """Actions by their deadline; the thread runs the ones not dropped by then.

    Neither add() nor drop() wakes the thread (a stream opens and closes both ways on every brokered call: a
    thread wake-up each would cost more than the bookkeeping): it looks every LOOK seconds at most,
    so an action runs up to LOOK late, and leaves once it found nothing waiting twice in a row.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        # one queue per timeout: a queue's deadlines then come in the order its streams were added
        self._queues: dict[float, OrderedDict[object, tuple[float, Callable[[], None]]]] = {}
        self._thread: threading.Thread | None = None
        self._unstarted = False  # the last start failed (said once, until a thread runs again)

    def add(self, key: object, timeout: float, action: Callable[[], None]) -> None:
        """Run ``action`` in ``timeout`` seconds (up to LOOK later) unless drop(``key``) comes first. With no
        thread to be had (the process at its limit) it stays queued, and the next add() starts the thread
        (what is queued goes with it): the stream runs untimed meanwhile, as go-plugin 1.0.1's always do,
        rather than fail its open (its knock already acknowledged, the peer would route the next stream to it)
        or reset a half-closed stream whose reply may be in flight."""
        with self._cond:
            self._queues.setdefault(timeout, OrderedDict())[key] = (time.monotonic() + timeout, action)
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="plugbay-yamux-timeouts", daemon=True)
                try:
                    thread.start()
                except RuntimeError as exc:  # "can't start new thread" (or the interpreter shutting down)
                    if not self._unstarted:
                        log.warning("no thread for the yamux stream timeouts (%s): streams run untimed until"
                                    " one can be started", exc)
                    self._unstarted = True
                    return
                self._unstarted = False
                self._thread = thread  # only now: a thread named running that is not would start none again

    def drop(self, key: object) -> None:
        """Forget the action under ``key`` (it has not run, and now will not); nothing if there is none."""
        with self._cond:
            self._drop(key)

    def _drop(self, key: object) -> None:
        for timeout, queue in self._queues.items():
            if queue.pop(key, None) is not None:
                if not queue:
                    del self._queues[timeout]
                return

    def _run(self) -> None:
        try:
            self._look()
        finally:  # ended by a non-Exception too (an action's SystemExit): the next add() starts a thread again
            with self._cond:
                if self._thread is threading.current_thread():
                    self._thread = None

    def _look(self) -> None:
        idle = False
        while True:
            expired: list[Callable[[], None]] = []
            with self._cond:
                now = time.monotonic()
                wait = LOOK
                for timeout, queue in list(self._queues.items()):
                    while queue:
                        deadline, action = next(iter(queue.values()))
                        if deadline > now:
                            wait = min(wait, deadline - now)
                            break
                        queue.popitem(last=False)
                        expired.append(action)
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
            for action in expired:  # outside the lock: an action takes its stream's lock (which holds add's)
                try:
                    action()
                except Exception:  # one stream's action must not end the timeouts of every other
                    log.exception("a yamux stream's timeout action failed")


TIMERS = StreamTimers()


def _forget_in_child() -> None:
    """A forked child has no timer thread (its parent's may be named running, or have held the lock at
    the fork, which would hold every open() there for good), and none of its parent's streams to time."""
    global TIMERS
    TIMERS = StreamTimers()


os.register_at_fork(after_in_child=_forget_in_child)


class TimedSession(Protocol):
    """What a stream's timeouts need of its session (plugbay.core.transport.ystream.Carrier extends it)."""

    # how long a stream closed this way may wait for the peer's FIN before it is reset, and one opened
    # here for the peer's ACK before the session is dropped
    stream_close_timeout: float
    stream_open_timeout: float

    def _not_acknowledged(self, stream: Any) -> None: ...


class Timed:
    """A Stream's timeouts (plugbay.core.transport.ystream inherits it): each stream's keys in TIMERS
    are (the stream, "open") and (the stream, "close")."""

    # the Stream's own state and steps, set and defined there: declared for the type checker
    session: TimedSession
    _cond: threading.Condition
    _reset: bool
    _closing: bool  # closed this way, waiting for the peer's FIN
    _opening: bool  # opened here, waiting for the peer's ACK

    if TYPE_CHECKING:
        def reset(self, wait: bool = True) -> None: ...

    def _timers_in(self, ends_close: int, ends_open: int) -> None:
        """What ends a timeout (the lock held): the close one a FIN or a reset from the peer; the open one
        its ACK, FIN or reset, or this side's own close (FIN sent) or reset, as hashicorp/yamux's."""
        if self._closing and ends_close:
            self._closing = False
            TIMERS.drop((self, "close"))
        if self._opening and ends_open:  # answered, or closed: no call waits on the peer accepting it
            self._opening = False
            TIMERS.drop((self, "open"))

    def _no_timeouts(self) -> None:
        """The stream was reset, or its session ended (the lock held)."""
        self._timers_in(1, 1)

    def _await_ack(self) -> None:
        """Opened here (its SYN about to go): the peer has stream_open_timeout to acknowledge it."""
        timeout = self.session.stream_open_timeout
        if timeout < math.inf:
            with self._cond:
                if self._reset:  # the session ended meanwhile (its streams' timers dropped already)
                    return
                TIMERS.add((self, "open"), timeout, self._open_too_long)
                self._opening = True

    def _await_fin(self, timeout: float) -> None:
        """Closed this way, the peer's side still open (the lock held)."""
        TIMERS.add((self, "close"), timeout, self._half_closed_too_long)
        self._closing = True

    def _open_too_long(self) -> None:
        with self._cond:
            if not self._opening:
                return
            self._opening = False
        self.session._not_acknowledged(self)

    def _half_closed_too_long(self) -> None:
        """The peer did not close its side within stream_close_timeout of ours: reset (as hashicorp/yamux's
        closeTimeout), by a thread that must not wait for the send lock."""
        with self._cond:
            if not self._closing:
                return
            self._closing = False
        self.reset(wait=False)
