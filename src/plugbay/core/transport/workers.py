"""Named threads kept for reuse by the copy loops of bridged streams.

Every brokered callback over the multiplexed connection bridges a yamux
stream on both sides, two copy loops each. Starting a thread waits until
the new thread runs, so under load four thread starts per callback cost
milliseconds, and on the host they would stall the session's reader. A
``Workers`` hands a loop to an idle thread with a queue put and starts a
thread only when none is idle; idle threads leave after ``idle`` seconds,
and all of them once ``close()`` is called (which joins them).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

_IDLE = 30.0
POOL_IDLE = 30.0  # DaemonPool: how long a thread past ``keep`` stays idle before it leaves
_JOIN = 5.0
_log = logging.getLogger("plugbay.workers")


class Workers:
    def __init__(self, name: str, idle: float = _IDLE) -> None:
        self._name = name
        self._idle_for = idle
        self._lock = threading.Lock()
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._idle = 0  # workers waiting on _tasks and not yet promised a task
        self._threads: set[threading.Thread] = set()
        self._closed = False

    def run(self, task: Callable[[], None]) -> None:
        """Run ``task`` on an idle worker, or on a new one. Refused (RuntimeError) once closed."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._name} workers are closed")
            if self._idle:
                self._idle -= 1
                self._tasks.put(task)
                return
            t = threading.Thread(target=self._work, args=(task,), name=self._name, daemon=True)
            self._threads.add(t)
            t.start()  # under the lock: close() never sees an unstarted thread

    def _work(self, task: Callable[[], None] | None) -> None:
        try:
            while task is not None:
                task()
                task = None
                with self._lock:
                    if self._closed:
                        return
                    self._idle += 1
                try:
                    task = self._tasks.get(timeout=self._idle_for)
                except queue.Empty:
                    with self._lock:
                        if self._idle and self._tasks.empty():  # nobody was promised this worker
                            self._idle -= 1
                            return
                    task = self._tasks.get()  # run() promised a task: it is on its way
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def close(self) -> None:
        """Let idle workers go and wait for busy ones (their tasks must be ending)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, 0
            threads = list(self._threads)
        for _ in range(idle):
            self._tasks.put(None)
        for t in threads:
            t.join(_JOIN)


class DaemonPool(Executor):
    """concurrent.futures.ThreadPoolExecutor's work (the same growth and idle reuse) on daemon threads.

    A gRPC server's handlers run here. ThreadPoolExecutor's threads are joined when the interpreter
    exits, so a plugin whose handler was still running (stuck, or sleeping) after Shutdown or
    SIGTERM did not exit until it returned, and its host killed it instead. A Go plugin exits when
    Serve returns, whatever its goroutines do; these threads let a Python plugin do the same.

    ``keep``: threads past that many leave once idle for POOL_IDLE seconds (None: all stay). A burst
    of calls that wait for a handler slot (core/plugin/gate.py) starts hundreds; they would stay for good.

    The idle workers are a plain count under the pool's lock, which submit() and a finishing worker take
    anyway: a threading.Semaphore's acquire and release take a Condition's lock in Python code, about 12k
    instructions per call, 3% of a plugin's unary call.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str, keep: int | None = None) -> None:
        self._max = max_workers
        self._prefix = thread_name_prefix
        self._keep = keep
        self._idle_for = POOL_IDLE
        self._started = 0
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...],
                                             dict[str, Any]] | None] = queue.SimpleQueue()
        self._idle = 0  # workers waiting for work (under _lock)
        # calls queued at the cap with no idle worker counted for them: the next worker to finish takes one
        # instead of counting itself idle (it counted itself idle, the token outlived it, and a later call
        # took that token, started no thread and waited behind busy ones while the pool had room)
        self._owed = 0
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: Future[Any] = Future()
            self._queue.put((future, fn, args, kwargs))
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self._max:
                self._start()
            else:
                self._owed += 1
            return future

    def _start(self) -> None:
        """Under the lock: one more worker."""
        thread = threading.Thread(target=self._work, name=f"{self._prefix}_{self._started}", daemon=True)
        self._started += 1
        thread.start()
        self._threads.add(thread)

    def _work(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=None if self._keep is None else self._idle_for)
            except queue.Empty:
                with self._lock:  # an idle count of ours (or one submit() did not take) leaves with us
                    if len(self._threads) > (self._keep or 0) and self._idle:
                        self._idle -= 1
                        self._threads.discard(threading.current_thread())
                        return
                continue
            if item is None:
                return
            future, fn, args, kwargs = item
            del item
            if future.set_running_or_notify_cancel():
                try:
                    try:
                        result = fn(*args, **kwargs)
                    except BaseException as exc:
                        future.set_exception(exc)
                        del exc
                    else:
                        future.set_result(result)
                        del result
                except BaseException:
                    # a done callback raised what concurrent.futures lets through (it logs an Exception
                    # only: KeyboardInterrupt, SystemExit): as in ThreadPoolExecutor, logged and this
                    # thread ends; the thread count lets go of it, and a call owed a worker gets one
                    _log.critical("Exception in worker", exc_info=True)
                    self._lost()
                    return
            del future, fn, args, kwargs
            with self._lock:  # with submit()'s look at the count: a call it owed is ours, or we count as idle
                if self._owed:
                    self._owed -= 1
                else:
                    self._idle += 1

    def _lost(self) -> None:
        """This worker ends mid-loop: it counts no more, and a call queued for the next worker to finish
        (owed) gets a thread of its own, or it would wait for another call's end, for good at max_workers=1."""
        with self._lock:
            self._threads.discard(threading.current_thread())
            if self._owed:
                self._owed -= 1
                self._start()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        for _ in threads:
            self._queue.put(None)
        if wait:
            # the set is read again until it holds no thread not yet joined: a worker lost after the list
            # above was taken (_lost) starts one for the call owed it, which must have run on return (as
            # Executor.shutdown(wait=True) promises). It takes the end-of-work mark put for the lost one
            joined: set[threading.Thread] = set()
            while threads:
                for thread in threads:
                    thread.join()
                joined.update(threads)
                with self._lock:
                    threads = [t for t in self._threads if t not in joined]
