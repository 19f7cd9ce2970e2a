"""The event loops plugbay's asyncio servicers run on (plugbay.core.transport.aiohandlers).

HandlerLoop is the process's own: one loop in a thread of its own ("plugbay-aio-handlers"),
started with the first call while a server holds it, ended (its coroutines cancelled and given
time to clean up) when the last hold is released. CallerLoop runs the handlers on an event loop
the caller runs (an AsyncClient host's own). Request streams are read on daemon threads. A forked
child starts afresh: its parent's loop has no thread there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from plugbay.core.transport.workers import DaemonPool


# A blocking read of a request stream holds a thread until the host sends its next message; the
# loop's default executor (a handful of threads) would let a few idle streams starve the rest.
# The gate bounds the calls (max_workers), so this only has to be past any sensible max_workers:
# threads are made as reads need them.
_READERS = 1024
# asyncio.to_thread and run_in_executor(None, ...): the blocking work of the plugin's coroutines
_BLOCKING = 32


class _DaemonDefault(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor on daemon threads. asyncio takes only a ThreadPoolExecutor
    there, whose threads the interpreter waits for at exit: a handler's ``to_thread`` work still
    running after SIGTERM or Shutdown kept the plugin alive until its host killed it (the sync
    handlers run on a DaemonPool for the same reason). Its work goes to a DaemonPool."""

    def __init__(self, pool: DaemonPool) -> None:
        super().__init__(max_workers=1)  # makes no thread: submit() is the pool's
        self._pool = pool

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)
        super().shutdown(wait=False)


# of a bounded finish (Release's ``within``), kept for what comes after the coroutines' cleanup: closing
# async generators, stopping the loop, joining its thread
_SETTLE = 0.2
# a close bounded by its owner (a Client's kill_grace): the loop gets at least LOOP_FLOOR to end (its cleanup
# is scheduled and runs), at most LOOP_END, about what an unbounded close lets it take
LOOP_FLOOR, LOOP_END = 0.25, 5.0


def release_within(ends: float | None) -> float | None:
    """What a Release gets of a close that must end by ``ends`` (time.monotonic(); None: unbounded)."""
    return None if ends is None else min(max(ends - time.monotonic(), LOOP_FLOOR), LOOP_END)


class Release(Protocol):
    """Lets go of a hold on a HandlerLoop. The last release ends the loop: its coroutines are cancelled
    and given 2 s for their cleanup, and the whole end may take about 5 s when they do not heed it (or
    block the loop). ``within`` bounds the whole end instead: a plugin exiting after Shutdown has what is
    left of its host's grace; the loop's threads are daemons, so its exit does not wait for them."""

    def __call__(self, within: float | None = None) -> None: ...


class HandlerLoop:
    """The event loop of the process's async handlers: started with the first call while a server
    holds it (hold()), ended when the last hold is released."""

    def __init__(self) -> None:
        self._forget()
        _ALL.add(self)

    def _forget(self) -> None:
        """No loop, no hold: new, or in a forked child, where the loop's thread does not exist (its copy
        of the loop counted as running, and every async call waited out its deadline there) and its
        parent's servers do not run (their holds are the parent's: see hold())."""
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._pid = os.getpid()
        self._holds = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._readers: DaemonPool | None = None

    def hold(self) -> Release:
        """Keep the loop for a server with async handlers; call what this returns (once is enough)
        when that server has stopped. The last release ends the loop and joins its thread: see Release."""
        with self._lock:
            self._holds += 1
            pid = self._pid
        released = threading.Event()

        def release(within: float | None = None) -> None:
            with self._lock:
                if released.is_set() or pid != self._pid:  # a hold of the parent's, released in a forked child
                    return
                released.set()
                self._holds -= 1
                taken = self._take() if self._holds == 0 else None
            if taken is not None:
                self._finish(*taken, within=within)
        return release

    def readers(self) -> concurrent.futures.Executor:
        """Where request streams are read: a daemon thread per stream being read (see _READERS)."""
        with self._lock:
            if self._holds <= 0:
                raise RuntimeError("no server holds the asyncio handlers' loop: the server has stopped")
            if self._readers is None:
                self._readers = DaemonPool(_READERS, "plugbay-aio-reads")
            return self._readers

    def get(self) -> asyncio.AbstractEventLoop:
        """The loop (started now if it is not running); RuntimeError once no server holds it."""
        with self._lock:
            if self._holds <= 0:
                raise RuntimeError("no server holds the asyncio handlers' loop: the server has stopped")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                loop.set_default_executor(_DaemonDefault(DaemonPool(_BLOCKING, "plugbay-aio-blocking")))
                self._thread = threading.Thread(target=self._run, args=(loop,), name="plugbay-aio-handlers",
                                                daemon=True)
                self._thread.start()
                self._loop = loop
            return self._loop

    def alive(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether a call waiting on ``loop`` may go on waiting: this loop's stop settles every call."""
        return True

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            with self._lock:  # ended by other means than stop(): the next call makes a new loop
                if self._loop is loop:
                    self._loop, self._thread = None, None
            _settle_left(loop)
            loop.close()

    def _take(self) -> tuple[asyncio.AbstractEventLoop | None, threading.Thread | None, DaemonPool | None]:
        # under the lock: a hold and a call right after this get a new loop, not this one
        taken = self._loop, self._thread, self._readers
        self._loop, self._thread, self._readers = None, None, None
        return taken

    def _finish(self, loop: asyncio.AbstractEventLoop | None, thread: threading.Thread | None,
                readers: DaemonPool | None, timeout: float = 2.0, *, within: float | None = None) -> None:
        if readers is not None:  # a read still waiting ends with the call's stream
            readers.shutdown(wait=False, cancel_futures=True)
        if loop is None or thread is None:
            return
        if thread is threading.current_thread():  # a coroutine stopped its own server: it cannot wait here
            threading.Thread(target=self._finish, args=(loop, thread, None, timeout), kwargs={"within": within},
                             daemon=True, name="plugbay-aio-stop").start()
            return
        # coroutines still running (their calls cut short by the server's stop) are cancelled and
        # given the time left to run their cleanup, as are async generators not yet closed
        # With ``within``, all of it ends by then, whether the coroutines heed their cancel or not (or
        # block the loop, when the drain never runs).
        end = time.monotonic() + (2 * timeout + 1.0 if within is None else max(within, 0.0))
        drain = timeout if within is None else max(min(timeout, within - _SETTLE), 0.0)
        try:
            asyncio.run_coroutine_threadsafe(_drain(drain), loop).result(drain + 1.0 if within is None
                                                                         else max(end - time.monotonic(), 0.0))
            loop.call_soon_threadsafe(loop.stop)
        except Exception:  # noqa: BLE001 - a cleanup that hangs, or a loop already closed: it ends without
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:
                pass
        thread.join(max(end - time.monotonic(), 0.0))


# every HandlerLoop of the process (plugbay's is aiohandlers.LOOP), each forgotten in a forked child
_ALL: weakref.WeakSet[HandlerLoop] = weakref.WeakSet()


def _forget_in_child() -> None:
    for each in list(_ALL):
        each._forget()


os.register_at_fork(after_in_child=_forget_in_child)


class CallerLoop:
    """Async handlers on an event loop the caller runs (an AsyncClient host's own, so its coroutines
    share that loop's objects); request streams are read on the process loop's readers, held here."""

    def __init__(self, loop: asyncio.AbstractEventLoop, shared: HandlerLoop) -> None:
        self._loop = loop
        self._shared = shared
        self.release = shared.hold()  # for readers() only: the shared loop starts on its own get()

    def get(self) -> asyncio.AbstractEventLoop:
        if self._loop.is_closed():
            raise RuntimeError("the event loop this server's async handlers run on is closed")
        return self._loop

    def readers(self) -> concurrent.futures.Executor:
        return self._shared.readers()

    def alive(self, loop: asyncio.AbstractEventLoop) -> bool:
        # a loop its owner stopped runs no callback: neither the handler nor a cancel would ever settle
        return loop.is_running()


class LoopSource(Protocol):
    """Where a server's async handlers run: HandlerLoop (the process's own) or CallerLoop."""

    def get(self) -> asyncio.AbstractEventLoop: ...

    def readers(self) -> concurrent.futures.Executor: ...

    def alive(self, loop: asyncio.AbstractEventLoop) -> bool: ...


def _settle_left(loop: asyncio.AbstractEventLoop) -> None:
    """Tasks a loop stopped under (a bounded end that gave up on a coroutine blocking the loop left its own
    drain unstarted) are cancelled and given one more pass: destroyed pending, asyncio warned of each at
    garbage collection ("Task was destroyed but it is pending", "coroutine ... was never awaited")."""
    left = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in left:
        task.cancel()
    if left:
        try:
            loop.run_until_complete(asyncio.wait(left, timeout=_SETTLE))
        except Exception:  # noqa: BLE001 - the loop's end goes on: it is closed next either way
            pass


async def _drain(timeout: float) -> None:
    here = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not here]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)
    await asyncio.get_running_loop().shutdown_asyncgens()
