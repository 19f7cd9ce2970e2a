"""Opening a spliced stream's twin on the other session of a brokering splice (plugbay.network.gateway.sessions).

A yamux session's reader must never wait on a write: hashicorp/yamux's receive
loop never does. Opening the twin sends its SYN on the OTHER session, which
waits for that session's send lock and for room in its socket, both held up
for as long as its peer (the child, or the remote host) does not read. Done on
the reader, one stuck side stopped the other side's session entirely: its pings
went unanswered and none of its frames were read. So the twins are opened here,
on a thread per direction, and the readers only queue their streams.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from plugbay.core.transport.bridges import splice
from plugbay.core.transport.yamux import Session, Stream, StreamClosed
from plugbay.errors import NoNewStreamsError

log = logging.getLogger("plugbay.gateway")


class TwinOpener:
    """Opens a twin on the session ``target()`` returns for every stream queued by pair(), then
    splices the two.

    Twins are opened in the order their streams were queued, one at a time: each side
    routes the streams it accepts by the order of knocks, so a splice keeps that order.
    The queue needs no bound of its own: every stream in it is counted against its
    session's caps (MAX_STREAMS, the stream shares). A thread runs only while streams
    wait, so an idle splice costs none.
    """

    def __init__(self, target: Callable[[], Session | None], name: str,
                 splices: set[threading.Thread], tlock: threading.Lock) -> None:
        self._target = target
        self._name = name
        self._splices = splices
        self._tlock = tlock
        self._lock = threading.Lock()
        self._queue: deque[tuple[Stream, Callable[[], None]]] = deque()
        self._worker: threading.Thread | None = None

    def pair(self, stream: Stream, done: Callable[[], None] = lambda: None) -> None:
        """Queue ``stream`` for a twin; never waits (a session's reader calls it). ``done`` runs once
        the stream is finished with: its splice ended, or it was reset for want of a twin."""
        with self._lock:
            self._queue.append((stream, done))
            if self._worker is not None:
                return  # the running worker takes it, after those queued before it
            self._worker = worker = threading.Thread(target=self._run, name=f"plugbay-{self._name}-open",
                                                     daemon=True)
        try:
            worker.start()
        except RuntimeError:  # no thread to be had: no twin either
            with self._lock:
                self._worker = None
                dropped = list(self._queue)
                self._queue.clear()
            log.warning("gateway: no thread to open %d stream(s) on the other side of a brokering session;"
                        " resetting them", len(dropped))
            for waiting, finished in dropped:
                waiting.reset()
                finished()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._worker = None
                    return
                stream, done = self._queue.popleft()
            self._open(stream, done)

    def _open(self, stream: Stream, done: Callable[[], None]) -> None:
        # even a stream its peer reset meanwhile gets its twin: skipping it would route the
        # other side's next stream to that stream's knock
        try:
            other = self._target()
            if other is None:
                raise StreamClosed("the other side is not up")
            twin = other.open()
        except (StreamClosed, NoNewStreamsError):  # gone, or shutting down (a GoAway): no twin to be had
            stream.reset()
            done()
            return
        try:
            splice(stream, twin, self._splices, self._tlock, done)
        except RuntimeError:  # no thread for a copy loop: what started ends on the resets
            log.warning("gateway: no thread to splice a brokering session's stream; resetting it")
            stream.reset()
            twin.reset()

    def join(self, timeout: float) -> None:
        """Wait (bounded) for the streams queued so far to get their twins or resets (the sessions
        closed first: then none waits long)."""
        with self._lock:
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)
