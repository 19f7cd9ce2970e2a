"""asyncio servicers on plugbay's sync gRPC servers: ``async def`` handlers run on one event loop.

Coroutines for unary answers, async generators for server streams and an async iterator of
requests for client streams, registered by the generated code unchanged. The server that takes
them (plugbay.core.plugin.gate, plugbay.core.broker.registrar) hands each one here; it runs on
one loop shared by the process's async handlers, in a thread of its own
("plugbay-aio-handlers"), or on a caller's loop (CallerLoop), while the call's gRPC thread
waits for it. Each server with an async handler holds the loop until it stops; the last
release ends it, and a later call is refused (UNAVAILABLE). The context is grpcio's sync one:
``await context.abort(...)`` and ``await context.send_initial_metadata(...)`` work as under grpc.aio
(plugbay.core.transport.aiocontext). A call that ends early cancels its
coroutine; one that ignores its cancel past the wait for it keeps the gate slot of its call (Outlived)
until it ends; ``await context.write()`` needs grpc.aio's context and is refused when registered.
The loops themselves are plugbay.core.transport.handlerloop's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from plugbay.core.transport.aiocontext import AioContext
from plugbay.core.transport.handlerkind import behavior_of, is_async
from plugbay.core.transport.handlerloop import (  # re-exported: the servers take them from here
    CallerLoop as CallerLoop,
    HandlerLoop as HandlerLoop,
    LoopSource as LoopSource,
)
from plugbay.errors import ConfigError

_END = object()


# how often a call waiting on a loop it does not own (CallerLoop) checks that the loop still runs
_ALIVE_CHECK = 0.5
# how long a call cut short waits for its coroutine's cleanup before its thread goes
_CLEANUP_WAIT = 2.0


class LoopGone(RuntimeError):
    """The event loop a handler ran on stopped before the handler ended (its call is refused)."""


class _Cut(Exception):
    """A coroutine whose task was cancelled, or that outlived the wait for it: no error of its own."""


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
        if task.cancelled():  # done cancelled, not failed: a CancelledError the handler raises from
            self.done.cancel()  # concurrent.futures (an Exception, unlike asyncio's) is its own error
            self.done.set_running_or_notify_cancel()  # wakes wait(), which cancel() alone does not
        elif task.exception() is not None:
            self.done.set_exception(task.exception())
        else:
            self.done.set_result(task.result())

    def result(self, source: LoopSource, timeout: float | None = None) -> Any:
        """The coroutine's result once it has ended, or its own exception (a TimeoutError too); _Cut when
        its task was cancelled or it is still running when the wait ends; LoopGone when its loop stopped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = _ALIVE_CHECK if deadline is None else min(_ALIVE_CHECK, max(deadline - time.monotonic(), 0))
            # not done.result(wait): its TimeoutError on a wait running out is the class a handler's
            # own asyncio.TimeoutError is, which was taken for "not yet" and the call never answered
            concurrent.futures.wait((self.done,), wait)
            if self.done.cancelled():
                raise _Cut("the handler's task was cancelled")
            if self.done.done():
                return self.done.result()
            now, cut_at = time.monotonic(), self._cut_at
            if (deadline is not None and now >= deadline) or (cut_at is not None and now - cut_at >= _CLEANUP_WAIT):
                raise _Cut("the coroutine outlived the wait for it")  # its cleanup goes on, unwaited
            if not source.alive(self._loop):
                raise LoopGone("the event loop the handler ran on stopped before it ended")

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


class Outlived:
    """A call's coroutines still running when its thread gave up waiting for them (_CLEANUP_WAIT after
    its cut): the gate that let the call in keeps its slot until they end (then()), so ServeConfig.
    max_workers bounds the coroutines as it bounds sync handlers that outlive their call (one that
    never ends keeps its slot for good)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: list[concurrent.futures.Future[Any]] = []
        self._left = 0
        self._release: Callable[[], None] | None = None

    def add(self, done: concurrent.futures.Future[Any]) -> None:
        self._running.append(done)  # the call's own thread, before then()

    def then(self, release: Callable[[], None]) -> None:
        """``release`` (the call's slot) now, or once the last of its outliving coroutines has ended."""
        running = [f for f in self._running if not f.done()]
        if not running:
            release()
            return
        with self._lock:
            self._left, self._release = len(running), release
        for done in running:
            done.add_done_callback(self._ended)  # at once when it ended meanwhile

    def _ended(self, _: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._left -= 1
            release = self._release if self._left == 0 else None
        if release is not None:
            release()


_outlived: dict[int, Outlived] = {}  # per running call (its context's id), while a gate tracks it
_outlived_lock = threading.Lock()


@contextmanager
def outlived(context: grpc.ServicerContext) -> Iterator[Outlived]:
    """Track the coroutines of the call ``context`` that outlive its thread's wait (the gate: see Outlived)."""
    holder = Outlived()
    with _outlived_lock:
        _outlived[id(context)] = holder
    try:
        yield holder
    finally:
        with _outlived_lock:
            _outlived.pop(id(context), None)


def _outlives(context: grpc.ServicerContext, call: _OnLoop) -> None:
    """``call`` is still running though its call's thread stops waiting: its gate is told, if any."""
    if call.done.done():
        return
    with _outlived_lock:
        holder = _outlived.get(id(context))
    if holder is not None:
        holder.add(call.done)


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


def _cancelled(call: _OnLoop, context: grpc.ServicerContext) -> None:
    if call._cut_at is not None or not context.is_active():  # cancel() came first
        context.abort(grpc.StatusCode.CANCELLED, "the call ended before its handler did")
    context.abort(grpc.StatusCode.CANCELLED, "the handler was cancelled before it answered (it raised"
                  " asyncio.CancelledError, or its task was cancelled)")


def _unary(behavior: Callable[..., Any], loop: LoopSource, streams_in: bool) -> Callable[..., Any]:
    def run(request: Any, context: grpc.ServicerContext) -> Any:
        aloop, arg = _loop_for(loop, context, request, streams_in)
        call = _on_loop(behavior(arg, AioContext(context)), aloop, context)
        if not context.add_callback(call.cancel):  # the call had ended already: it is never told
            call.cancel()
        try:
            return call.result(loop)
        except _Cut:
            _outlives(context, call)
            _cancelled(call, context)
        except LoopGone:
            _stopping(context)
            raise
    return run


def _streaming(behavior: Callable[..., Any], loop: LoopSource, streams_in: bool) -> Callable[..., Any]:
    def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        aloop, arg = _loop_for(loop, context, request, streams_in)
        responses = behavior(arg, AioContext(context))
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
                except _Cut:
                    _outlives(context, step)
                    if ended.is_set():
                        return
                    _cancelled(step, context)
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
                    _outlives(context, closing)
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
