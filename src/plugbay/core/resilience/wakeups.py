"""The Supervisor's condition: it wakes threads, and asyncio waiters too, on each change of its state.

An AsyncSupervisor's waits (wait_running(), its channel's channel_ready() and
wait_for_state_change()) hold no thread: each is a future on its own event loop, which
notify_all() completes through loop.call_soon_threadsafe. Any number may wait, each within
its own timeout, and none is asked again until something changed (or a slow tick passed:
some changes, such as a plugin's exit the monitor has not seen yet, come with no notify).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable

TICK = 0.5  # as the threads' waits (calls.wait_until): the longest a change without a notify goes unseen


class StateCondition(threading.Condition):
    """threading.Condition whose notify_all() also wakes the coroutines waiting in :meth:`until`."""

    def __init__(self) -> None:
        super().__init__()
        self._aio_lock = threading.Lock()  # not the condition's: a loop must not wait out its holders
        self._aio_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()

    def notify_all(self) -> None:
        super().notify_all()
        with self._aio_lock:
            waiters = list(self._aio_waiters)
        for entry in waiters:
            loop, future = entry
            try:
                loop.call_soon_threadsafe(_wake, future)
            except RuntimeError:
                # its loop is closed: nobody waits there any more, and a waiter whose loop was closed
                # under it (never cancelled) never reaches its own finally to drop the entry
                with self._aio_lock:
                    self._aio_waiters.discard(entry)

    async def until(self, check: Callable[[], bool], timeout: float) -> bool:
        """Whether ``check()`` (which must not block; it may raise) comes true within ``timeout`` seconds
        (math.inf: no bound), asked again at each notify_all()."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout if math.isfinite(timeout) else math.inf
        while True:
            entry = (loop, loop.create_future())
            with self._aio_lock:  # before the check: a notify after it is not lost
                self._aio_waiters.add(entry)
            try:
                if check():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                await asyncio.wait([entry[1]], timeout=min(remaining, TICK))
            finally:
                with self._aio_lock:
                    self._aio_waiters.discard(entry)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
