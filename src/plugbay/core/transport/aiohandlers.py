"""asyncio servicers on plugbay's sync gRPC servers: ``async def`` handlers run on one event loop.

Coroutines for unary answers, async generators for server streams and an async iterator of
requests for client streams, registered by the generated code unchanged. The server that takes
them (plugbay.core.plugin.gate, plugbay.core.broker.registrar) hands each one here; it runs on
one loop shared by the process's async handlers, in a thread of its own
("plugbay-aio-handlers"), or on a caller's loop (CallerLoop), while the call's gRPC thread
waits for it. Each server with an async handler holds the loop until it stops; the last
release ends it, and a later call is refused (UNAVAILABLE). The context is grpcio's sync one:
``await context.abort(...)`` works as under grpc.aio. A call that ends early cancels its
coroutine; ``await context.write()`` needs grpc.aio's context and is refused when registered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, Protocol

import grpc

from plugbay.core.transport.handlerkind import behavior_of, is_async
from plugbay.core.transport.workers import DaemonPool
from plugbay.errors import ConfigError

_END = object()


# A blocking read of a request stream holds a thread until the host sends its next message; the
# loop's default executor (a handful of threads) would let a few idle streams starve the rest.
# The gate bounds the calls (max_workers), so this only has to be past any sensible max_workers:
# threads are made as reads need them.
_READERS = 1024
# asyncio.to_thread and run_in_executor(None, ...): the blocking work of the plugin's coroutines
_BLOCKING = 32
# how often a call waiting on a loop it does not own (CallerLoop) checks that the loop still runs
_ALIVE_CHECK = 0.5
# how long a call cut short waits for its coroutine's cleanup before its thread goes
_CLEANUP_WAIT = 2.0


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


class HandlerLoop:
    """The event loop of the process's async handlers: started with the first call while a server
    holds it (hold()), ended when the last hold is released."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holds = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._readers: DaemonPool | None = None

    def hold(self) -> Callable[[], None]:
        """Keep the loop for a server with async handlers; call what this returns (once is enough)
        when that server has stopped. The last release ends the loop and joins its thread."""
        with self._lock:
            self._holds += 1
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if released.is_set():
                    return
                released.set()
                self._holds -= 1
                taken = self._take() if self._holds == 0 else None
            if taken is not None:
                self._finish(*taken)
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
            loop.close()

    def _take(self) -> tuple[asyncio.AbstractEventLoop | None, threading.Thread | None, DaemonPool | None]:
        # under the lock: a hold and a call right after this get a new loop, not this one
        taken = self._loop, self._thread, self._readers
        self._loop, self._thread, self._readers = None, None, None
        return taken

    def _finish(self, loop: asyncio.AbstractEventLoop | None, thread: threading.Thread | None,
                readers: DaemonPool | None, timeout: float = 2.0) -> None:
        if readers is not None:  # a read still waiting ends with the call's stream
            readers.shutdown(wait=False, cancel_futures=True)
        if loop is None or thread is None:
            return
        if thread is threading.current_thread():  # a coroutine stopped its own server: it cannot wait here
            threading.Thread(target=self._finish, args=(loop, thread, None, timeout), daemon=True,
                             name="plugbay-aio-stop").start()
            return
        # coroutines still running (their calls cut short by the server's stop) are cancelled and
        # given the time left to run their cleanup, as are async generators not yet closed
        try:
            asyncio.run_coroutine_threadsafe(_drain(timeout), loop).result(timeout + 1.0)
            loop.call_soon_threadsafe(loop.stop)
        except Exception:  # noqa: BLE001 - a cleanup that hangs, or a loop already closed: it ends without
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:
                pass
        thread.join(timeout)


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


async def _drain(timeout: float) -> None:
    here = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not here]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)
    await asyncio.get_running_loop().shutdown_asyncgens()


class LoopGone(RuntimeError):
    """The event loop a handler ran on stopped before the handler ended (its call is refused)."""


class _OnLoop:
    """A coroutine run as a task on the handler loop. ``done`` settles when the task has ended, so
    a call cut short waits for its coroutine's cleanup (max_workers bounds the coroutines, too),
    for _CLEANUP_WAIT at most: the coroutine may be what the waiting ends (a handler that kills
    its own client waits for the server's stop, which waits for this thread)."""

    def __init__(self, coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._cut_at: float | None = None  # when the call was cut short (cancel())
        self._task: asyncio.Task[Any] | None = None
        self.done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            loop.call_soon_threadsafe(self._begin, coro)
        except RuntimeError:  # the loop ended (the plugin is stopping)
            coro.close()
            raise

    def _begin(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro
        self._task = self._loop.create_task(_contained(coro))
        self._task.add_done_callback(self._settle)

    def _settle(self, task: asyncio.Task[Any]) -> None:
        self._coro.close()  # a task cancelled before its first step never started it: no "never awaited"
        if task.cancelled():
            self.done.set_exception(concurrent.futures.CancelledError())
        elif task.exception() is not None:
            self.done.set_exception(task.exception())
        else:
            self.done.set_result(task.result())

    def result(self, source: LoopSource, timeout: float | None = None) -> Any:
        """The coroutine's result once it has ended; LoopGone when its loop stopped first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = _ALIVE_CHECK if deadline is None else min(_ALIVE_CHECK, max(deadline - time.monotonic(), 0))
            try:
                return self.done.result(wait)
            except concurrent.futures.TimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                cut_at = self._cut_at
                if cut_at is not None and time.monotonic() - cut_at >= _CLEANUP_WAIT:
                    raise concurrent.futures.CancelledError() from None  # its cleanup goes on, unwaited
                if not source.alive(self._loop):
                    raise LoopGone("the event loop the handler ran on stopped before it ended") from None

    def cancel(self) -> None:
        """Any thread; after _begin, as the loop runs its callbacks in order."""
        if self._cut_at is None:
            self._cut_at = time.monotonic()
        try:
            self._loop.call_soon_threadsafe(self._cancel)
        except RuntimeError:  # the loop ended: its tasks with it
            pass

    def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


LOOP = HandlerLoop()  # one for the process, held by each server with an async handler


def sync_handler(method: str, handler: Any, loop: LoopSource) -> Any:
    """``handler`` with its async behavior run on ``loop`` (unchanged when it is sync)."""
    if not is_async(handler):
        return handler
    kind, behavior = behavior_of(handler)
    streams_out = kind.endswith("_stream")
    if streams_out != inspect.isasyncgenfunction(behavior):
        want = "an async generator (async def with yield)" if streams_out else "a coroutine (async def, no yield)"
        raise ConfigError(f"the handler for {method} ({kind}) must be {want} to run on plugbay's asyncio"
                          " support; a server stream written with `await context.write()` needs grpc.aio's"
                          " server, so yield each response instead")
    streams_in = kind.startswith("stream_")
    make = _streaming if streams_out else _unary
    factory = getattr(grpc, f"{kind}_rpc_method_handler")
    return factory(make(behavior, loop, streams_in), handler.request_deserializer, handler.response_serializer)


def _loop_for(loop: LoopSource, context: grpc.ServicerContext, request: Any,
              streams_in: bool) -> tuple[asyncio.AbstractEventLoop, Any]:
    """The loop, and the handler's argument: ``request``, or its request stream made async."""
    try:
        aloop = loop.get()
        return aloop, _requests(request, aloop, loop.readers()) if streams_in else request
    except RuntimeError:  # a call that raced its server's stop
        _stopping(context)
        raise


def _on_loop(coro: Coroutine[Any, Any, Any], aloop: asyncio.AbstractEventLoop,
             context: grpc.ServicerContext) -> _OnLoop:
    try:
        return _OnLoop(coro, aloop)
    except RuntimeError:  # the loop ended under the call: its server has stopped
        _stopping(context)
        raise


def _stopping(context: grpc.ServicerContext) -> None:
    context.abort(grpc.StatusCode.UNAVAILABLE, "the server is stopping; call again on a new connection")


def _unary(behavior: Callable[..., Any], loop: LoopSource, streams_in: bool) -> Callable[..., Any]:
    def run(request: Any, context: grpc.ServicerContext) -> Any:
        aloop, arg = _loop_for(loop, context, request, streams_in)
        call = _on_loop(behavior(arg, context), aloop, context)
        if not context.add_callback(call.cancel):  # the call had ended already: it is never told
            call.cancel()
        try:
            return call.result(loop)
        except concurrent.futures.CancelledError:
            context.abort(grpc.StatusCode.CANCELLED, "the call ended before its handler did")
        except LoopGone:
            _stopping(context)
            raise
    return run


def _streaming(behavior: Callable[..., Any], loop: LoopSource, streams_in: bool) -> Callable[..., Any]:
    def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        aloop, arg = _loop_for(loop, context, request, streams_in)
        responses = behavior(arg, context)
        ended = threading.Event()
        current: list[_OnLoop] = []

        def cut_short() -> None:
            ended.set()
            if current:
                current[-1].cancel()

        if not context.add_callback(cut_short):  # the call had ended already: it is never told
            ended.set()
        try:
            while not ended.is_set():
                step = _on_loop(_next(responses), aloop, context)
                current[:] = [step]
                if ended.is_set():  # cut short before the step was current
                    step.cancel()
                try:
                    item = step.result(loop)
                except concurrent.futures.CancelledError:
                    return
                except LoopGone:
                    _stopping(context)
                    raise
                if item is _END:
                    return
                yield item
        finally:
            # the call ended (or was cut short) before the generator did: run its finally blocks
            try:
                closing: _OnLoop | None = _OnLoop(responses.aclose(), aloop)
            except RuntimeError:  # the loop ended, and closed its generators as it did
                closing = None
            if closing is not None:
                try:
                    closing.result(loop, _CLEANUP_WAIT)
                except Exception:  # noqa: BLE001 - its cleanup failed or hung: the call is over anyway
                    closing.cancel()
    return run


async def _contained(coro: Coroutine[Any, Any, Any]) -> Any:
    """``coro``, with a SystemExit (or another BaseException but a cancel) it raises made an error of
    its call: asyncio lets those out of run_forever(), which would end the loop every handler shares."""
    try:
        return await coro
    except (Exception, asyncio.CancelledError):
        raise
    except BaseException as exc:
        raise RuntimeError(f"the plugin's handler raised {type(exc).__name__}: {exc}") from exc


async def _next(responses: AsyncIterator[Any]) -> Any:
    try:
        return await responses.__anext__()
    except StopAsyncIteration:
        return _END


async def _requests(requests: Iterator[Any], loop: asyncio.AbstractEventLoop,
                    readers: concurrent.futures.Executor) -> AsyncIterator[Any]:
    """The call's request stream for a coroutine: each blocking read on a thread off the loop."""
    while True:
        item = await loop.run_in_executor(readers, next, requests, _END)
        if item is _END:
            return
        yield item
