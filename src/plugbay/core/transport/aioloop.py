"""One asyncio event-loop thread for the whole host process: broker streams on grpc.aio and all plugin I/O.

grpcio's sync API spends two threads on every open bidirectional call (the
channel's spin thread and the request-iterator consumer) and the reader a
third; a host with many live plugins paid that for each one's broker stream.
On grpc.aio the same streams cost no thread of their own: they all run on
this loop ("plugbay-io"), and grpcio adds one poller thread of its own for
the process while any grpc.aio channel exists. The shared I/O loop
(plugbay.core.transport.ioloop: pipes, exits, TLS relays) is a user of the
same thread, so a host has one plugbay thread whatever it runs.

Users hold a :class:`Lease`: the first :meth:`AioLoop.acquire` starts the
thread, and the :meth:`Lease.release` of the last user stops the loop and
joins the thread, so a host with no stream left has no plugbay thread. Work
on the loop must not block: it is shared by every plugin.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

_log = logging.getLogger("plugbay.io")
_JOIN_TIMEOUT = 10.0
_T = TypeVar("_T")


class Lease:
    """One user's hold on the shared loop; run work there, release() once when done."""

    def __init__(self, owner: AioLoop, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self._owner = owner
        self.loop = loop
        self.thread = thread  # the loop's thread (callbacks run there)
        self._released = False
        self._lock = threading.Lock()

    def run(self, coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        """Schedule ``coro`` on the loop; its result arrives in the returned future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call_soon(self, func: Callable[..., None], *args: Any) -> bool:
        """Run ``func(*args)`` on the loop thread soon; False if the loop is gone (nothing runs)."""
        try:
            self.loop.call_soon_threadsafe(func, *args)
            return True
        except RuntimeError:  # closed: only after every lease was released
            return False

    def release(self) -> None:
        """Give the loop back (idempotent); the last lease stops it and joins its thread."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._owner._release(self.loop)


class AioLoop:
    """The shared loop. Use :func:`shared`; a private instance is for tests of the loop itself."""

    def __init__(self, name: str = "plugbay-io") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._users = 0
        self._stopped: list[threading.Thread] = []  # stopped by a release on their own thread: not joined yet

    def acquire(self) -> Lease:
        """A lease on the running loop, starting its thread if this is the first user."""
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                began = threading.Event()
                thread = threading.Thread(target=_run, args=(loop, began), name=self.name, daemon=True)
                self._loop, self._thread = loop, thread  # first: a Ctrl-C just after the start leaves it known
                try:
                    # Not waited for: what is scheduled before run_forever() begins runs then (a
                    # plugin's start would wait here for the thread to be scheduled twice).
                    _start(thread, loop, began)
                except BaseException:
                    self._loop = self._thread = None
                    raise
            assert self._thread is not None
            self._users += 1
            return Lease(self, self._loop, self._thread)

    def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            if loop is not self._loop:
                return  # a loop of before a fork
            self._users -= 1
            if self._users > 0:
                return
            thread = self._thread
            self._loop = self._thread = None
            if thread is threading.current_thread():  # released from a callback: join_idle() joins it
                self._stopped = [t for t in self._stopped if t.is_alive()] + [thread]
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)
            if thread.is_alive():  # pragma: no cover - a user left blocking work on the loop
                _log.warning("the shared asyncio loop thread did not end within %.0fs", _JOIN_TIMEOUT)

    def join_idle(self, timeout: float = _JOIN_TIMEOUT) -> bool:
        """Join the loop threads stopped by a release made on the loop itself; True if none is left running.

        A no-op on such a thread itself (it ends once its callback returns).
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            stopped = list(self._stopped)
        for thread in stopped:
            if thread is threading.current_thread():
                continue
            thread.join(max(deadline - time.monotonic(), 0.0))
            if not thread.is_alive():
                with self._lock:
                    if thread in self._stopped:
                        self._stopped.remove(thread)
        with self._lock:
            return not any(t.is_alive() for t in self._stopped)

    def on_loop(self) -> bool:
        """True on the running loop's thread (inside a callback or a coroutine of it)."""
        return self._thread is threading.current_thread()

    @property
    def running(self) -> bool:
        with self._lock:
            return self._thread is not None

    @property
    def users(self) -> int:
        with self._lock:
            return self._users


def _start(thread: threading.Thread, loop: asyncio.AbstractEventLoop, began: threading.Event) -> None:
    """``thread.start()``; when that raises, no thread of ``loop`` runs on (and ``loop`` is closed).

    Thread.start() waits for the new thread to begin: a Ctrl-C there leaves a thread that runs
    (or soon will) a loop no user holds, for the life of the process, and the next acquire()
    would start another.
    """
    try:
        thread.start()
    except Exception:  # the thread could not be made ("can't start new thread"): only the loop to close
        loop.close()
        raise
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)  # run_forever() ends at once, even one not begun yet
        if began.wait(_JOIN_TIMEOUT):  # Thread.join() refuses a thread that has not begun
            thread.join(_JOIN_TIMEOUT)  # _run closes the loop
        raise


def _run(loop: asyncio.AbstractEventLoop, began: threading.Event | None = None) -> None:
    if began is not None:
        began.set()
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
        leftover = asyncio.all_tasks(loop)  # every user waited for its own work; this is belt and braces
        for task in leftover:
            task.cancel()
        if leftover:
            loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    except Exception:  # pragma: no cover - a bug in a user's work; never leave a silent dead loop
        _log.exception("the shared asyncio loop failed")
    finally:
        loop.close()


class Deferred:
    """``func()`` once, on the shared loop's thread: ``delay`` seconds from now, or sooner at now().

    For work a caller keeps off a latency-critical moment without losing it
    (a Client's GRPCStdio reader: after the first call, or shortly after the
    start if no call comes). cancel() drops it if it has not run; the lease it
    holds on the loop is given back once it ran or was cancelled.
    """

    def __init__(self, func: Callable[[], None], delay: float, loop: AioLoop | None = None) -> None:
        self._func = func
        self._delay = delay
        self._lock = threading.Lock()
        self._pending = True
        self._lease = (loop or shared()).acquire()
        self._lease.call_soon(self._arm)

    def now(self) -> None:
        """Run it on the loop thread now if it has not run yet (thread-safe)."""
        if self._pending:
            self._lease.call_soon(self._fire)

    def cancel(self) -> None:
        """Drop it if it has not run (it will not run after this returns)."""
        with self._lock:
            pending, self._pending = self._pending, False
        if pending:
            self._lease.release()

    def _arm(self) -> None:
        asyncio.get_running_loop().call_later(self._delay, self._fire)

    def _fire(self) -> None:
        with self._lock:  # held while func runs: cancel() after it waits for its end
            if not self._pending:
                return
            self._pending = False
            try:
                self._func()
            except Exception:
                _log.exception("deferred work on the shared loop failed")
        self._lease.release()


_SHARED = AioLoop()


def _forget_in_child() -> None:
    """A forked child has no loop thread (nor its parent's streams): start afresh there."""
    global _SHARED
    _SHARED = AioLoop()


os.register_at_fork(after_in_child=_forget_in_child)


def shared() -> AioLoop:
    """The host process's one asyncio loop."""
    return _SHARED
