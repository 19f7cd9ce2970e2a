"""asyncio servicers on the plugin's gRPC server: ``async def`` handlers run on one event loop.

A plugin's servicer may write its methods as grpc.aio's are written: coroutines for unary
answers, async generators for server streams, an async iterator of requests for client
streams. The generated ``add_*Servicer_to_server`` code registers them unchanged; the gate
(gate.py) hands each such handler here, and it runs on one event loop shared by every
async handler of the plugin, in a thread of its own ("plugbay-aio-handlers"), while the
call's gRPC thread waits for its result. So the plugin's coroutines share one loop (its
locks, queues and clients work across calls), and the server stays the sync grpcio one
that plugbay's own services (health, broker, stdio, controller) run on.

The context is grpcio's sync ServicerContext: ``context.abort()`` raises at once, so
``await context.abort(...)`` works as under grpc.aio, and ``time_remaining()``,
``is_active()`` and metadata work too. A call that ends early (cancelled by the host, past
its deadline) cancels its coroutine. A server stream is an async generator (grpc.aio's other
style, ``await context.write()``, needs grpc.aio's context and is refused when registered).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from plugbay.errors import ConfigError

_END = object()


# A blocking read of a request stream holds a thread until the host sends its next message; the
# loop's default executor (a handful of threads) would let a few idle streams starve the rest.
# The gate bounds the calls (max_workers), so this only has to be past any sensible max_workers:
# threads are made as reads need them.
_READERS = 1024


class HandlerLoop:
    """The event loop of the plugin's async handlers, started with the first one's call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._readers: concurrent.futures.ThreadPoolExecutor | None = None

    def readers(self) -> concurrent.futures.Executor:
        """Where request streams are read: a thread per stream being read."""
        with self._lock:
            if self._readers is None:
                self._readers = concurrent.futures.ThreadPoolExecutor(_READERS, "plugbay-aio-reads")
            return self._readers

    def get(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._run, args=(loop,), name="plugbay-aio-handlers",
                                                daemon=True)
                self._thread.start()
                self._loop = loop
            return self._loop

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def stop(self, timeout: float = 2.0) -> None:
        """End the loop (the server has stopped: no handler runs any more); joins its thread."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
            readers, self._readers = self._readers, None
        if readers is not None:  # a read still waiting ends with the call's stream
            readers.shutdown(wait=False, cancel_futures=True)
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)


LOOP = HandlerLoop()  # one for the plugin process; gate.stop_async_handlers() ends it


def sync_handler(method: str, handler: Any, loop: HandlerLoop) -> Any:
    """``handler`` with its async behavior run on ``loop`` (unchanged when it is sync)."""
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behavior = getattr(handler, kind, None)
        if behavior is not None:
            break
    if behavior is None or not (inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)):
        return handler
    streams_out = kind.endswith("_stream")
    if streams_out != inspect.isasyncgenfunction(behavior):
        want = "an async generator (async def with yield)" if streams_out else "a coroutine (async def, no yield)"
        raise ConfigError(f"the plugin's handler for {method} ({kind}) must be {want} to run on plugbay's asyncio"
                          " support; a server stream written with `await context.write()` needs grpc.aio's"
                          " server, so yield each response instead")
    streams_in = kind.startswith("stream_")
    make = _streaming if streams_out else _unary
    factory = getattr(grpc, f"{kind}_rpc_method_handler")
    return factory(make(behavior, loop, streams_in), handler.request_deserializer, handler.response_serializer)


def _unary(behavior: Callable[..., Any], loop: HandlerLoop, streams_in: bool) -> Callable[..., Any]:
    def run(request: Any, context: grpc.ServicerContext) -> Any:
        aloop = loop.get()
        arg = _requests(request, aloop, loop.readers()) if streams_in else request
        future = asyncio.run_coroutine_threadsafe(behavior(arg, context), aloop)
        context.add_callback(future.cancel)  # the call ended early: so does its coroutine (no-op once done)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            context.abort(grpc.StatusCode.CANCELLED, "the call ended before its handler did")
    return run


def _streaming(behavior: Callable[..., Any], loop: HandlerLoop, streams_in: bool) -> Callable[..., Any]:
    def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        aloop = loop.get()
        responses = behavior(_requests(request, aloop, loop.readers()) if streams_in else request, context)
        current: list[concurrent.futures.Future[Any]] = []
        context.add_callback(lambda: current and current[-1].cancel())
        try:
            while True:
                step = asyncio.run_coroutine_threadsafe(_next(responses), aloop)
                current[:] = [step]
                try:
                    item = step.result()
                except concurrent.futures.CancelledError:
                    return  # the call ended early
                if item is _END:
                    return
                yield item
        finally:
            # the call ended (or was cancelled) before the generator did: run its finally blocks
            closing = asyncio.run_coroutine_threadsafe(responses.aclose(), aloop)
            try:
                closing.result(5.0)
            except Exception:  # noqa: BLE001 - its cleanup failed or hung: the call is over anyway
                closing.cancel()
    return run


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
