"""A brokered server's executor that takes over a stopped server's idle worker pool.

go-plugin's bidirectional pattern starts a server for every call; with a
worker pool of its own per server, each call also started a worker thread
and joined it afterwards, costing about what the callback itself does. A
:class:`Lane` is the server's executor: at its first call it takes a pool a
stopped server left idle (plugbay.core.broker.spares keeps one), else makes
one. A pool serves one server at a time, so each server still has its own
workers and their limit; a spare server built ahead of time holds none.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

from plugbay.core.transport.workers import DaemonPool

_SERVER_WORKERS = 16


class Lane(Executor):
    """A brokered server's executor: runs its calls on a worker pool of its own, found at its first call.

    The pool is one a stopped server left idle (``pools()``), else a new one;
    a spare built ahead of time therefore holds no threads, and a pool serves
    one server at a time (each server keeps its own workers and their limit).
    """

    def __init__(self, pools: Callable[[], DaemonPool | None]) -> None:
        self._pools = pools
        self._lock = threading.Lock()
        self._pool: DaemonPool | None = None
        self._busy = 0
        self._shut = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._pool is None:
                self._pool = self._pools() or new_pool()
            self._busy += 1
            pool = self._pool
        try:
            future = pool.submit(fn, *args, **kwargs)
        except BaseException:
            self._finished(None)
            raise
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _future: Future[Any] | None) -> None:
        with self._lock:
            self._busy -= 1

    def release(self) -> tuple[bool, DaemonPool | None]:
        """(False, None) while a call runs on it; else (True, its pool or None) and the lane takes no more work."""
        with self._lock:
            if self._busy:
                return False, None
            pool, self._pool, self._shut = self._pool, None, True
            return True, pool

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shut = True
            pool = self._pool
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def new_pool() -> DaemonPool:
    """A brokered server's worker pool: up to _SERVER_WORKERS calls at once."""
    return DaemonPool(_SERVER_WORKERS, "plugbay-brokered")
