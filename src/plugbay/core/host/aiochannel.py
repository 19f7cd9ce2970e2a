"""The asyncio twin of ManagedChannel: grpc.aio calls with the same deadlines and typed failures.

Only the I/O is here. What a failure means (the plugin died, the Client was
killed, a deadline passed) and the state it is judged by stay in the sync
:class:`~plugbay.core.host.channel.ManagedChannel` the Client owns, so a
call fails the same way on either side. The grpc.aio channel is a second
connection to the plugin, dialed like the first (``Redial``), bound to the
event loop that made it. Judging a failure may wait (for the exit status, for
the plugin's last stderr lines): that runs on the owner's executor, never on
the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator
from concurrent.futures import Executor
from typing import Any, Self, TypeVar

import grpc
import grpc.aio

from plugbay.core.host.aiojudging import (  # off_loop, retrieved: re-exported, the asyncio side's helpers
    SharedExitCheck,
    off_loop as off_loop,
    retrieved as retrieved,
)
from plugbay.core.host.callerrors import WrongLoop as WrongLoop  # re-exported: where the asyncio side raises it
from plugbay.core.host.aiorefused import RefusedCall as RefusedCall  # re-exported: long imported from here
from plugbay.core.host.aiorefused import refused_now as refused_now
from plugbay.core.host.aiocall import AioCall, DoneCallback
from plugbay.core.host.aiocall import lost_send as lost_send  # re-exported: long imported from here
from plugbay.core.host.callerrors import CallTimeout
from plugbay.core.host.channel import ManagedChannel
from plugbay.core.host.deadline import call_timeout
from plugbay.core.transport.requestsource import RequestSource, Watched

_T = TypeVar("_T")
_log = logging.getLogger("plugbay.client")


class AioManagedChannel(grpc.aio.Channel):  # type: ignore[misc]
    """A grpc.aio.Channel proxy: the Client's default deadline and typed failures on every call."""

    def __init__(self, inner: grpc.aio.Channel, managed: ManagedChannel, loop: asyncio.AbstractEventLoop,
                 executor: Executor | None = None, owner: str = "AsyncClient") -> None:
        self._inner = inner
        self._owner_kind = owner  # what WrongLoop calls the channel's owner: "AsyncClient" or "AsyncSupervisor"
        self._managed = managed
        self._loop = loop
        self._executor = executor
        self._closing: asyncio.Future[None] | None = None
        self._ended = False  # its owner ended it (kill(), close(), stop()), on whichever loop
        self._judging = SharedExitCheck(managed, executor)
        # The resilience layers' seam (plugbay.core.resilience.calls.install): each unary-unary
        # call runs through it as one or more tries, as on the sync ManagedChannel.
        self.call_hook: Callable[[str, Callable[[float | None], Awaitable[Any]], float | None],
                                 Awaitable[Any]] | None = None
        managed.on_close_current.append(self.close_soon)

    # --- owner's controls ---------------------------------------------------------

    def close_soon(self) -> None:
        """The plugin died or was stopped (any thread): fail calls in flight now, as the sync channel does."""
        try:
            self._loop.call_soon_threadsafe(self._start_close)
        except RuntimeError:  # the loop is closed: its channel went with it
            pass

    def _start_close(self) -> asyncio.Future[None]:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._inner.close(), loop=self._loop)
        return self._closing

    async def aclose(self) -> None:
        """Close the connection (AsyncClient.kill/close); later calls fail typed."""
        self._ended = True
        if self.close_soon in self._managed.on_close_current:
            self._managed.on_close_current.remove(self.close_soon)
        if asyncio.get_running_loop() is self._loop:
            await self._start_close()
        elif not self._loop.is_closed() and self._loop.is_running():  # the loop of its calls, in another thread
            closing = asyncio.run_coroutine_threadsafe(self._close_here(), self._loop)
            try:
                await asyncio.wait_for(asyncio.wrap_future(closing), 5.0)
            except (asyncio.TimeoutError, RuntimeError):
                pass  # that loop is stuck or ending: the connection ends with it
        else:
            await self._close_without_its_loop()

    async def _close_without_its_loop(self) -> None:
        """Its loop is closed (an asyncio.run() that ended) or stopped, and the connection did not end with it:
        it lasted until the grpc.aio channel was collected (with the AsyncClient that holds it), a live
        plugin's (a reattached one's close()) too. grpc.aio's close() without a grace runs nothing on the
        channel's loop but the cancels of calls still in flight, and the ending loop's run cancelled those."""
        try:
            await self._inner.close()
        except RuntimeError as exc:  # a call of the closed loop's that its end left in flight: ends when collected
            _log.debug("closing a grpc.aio channel whose event loop had closed: %s", exc)

    async def _close_here(self) -> None:
        """On the channel's own loop: marked as closing first, so its calls' local cancels are typed."""
        await self._start_close()

    async def offload(self, func: Callable[..., _T], *args: Any) -> _T:
        """``func(*args)`` off the event loop (it may wait on the plugin's exit or its output)."""
        return await off_loop(self._executor, func, *args)

    async def translate(self, exc: grpc.RpcError, past_deadline: bool, left: float | None = None) -> BaseException:
        """The typed error of a call's failure (judged off the loop when that may wait); ``left``: what is left
        of the call's deadline, the most the judging may wait for the plugin's exit to show (None: no deadline)."""
        return await self._judging.translate(exc, past_deadline, left)

    async def closed_error(self) -> BaseException:
        """The typed error of a call on the closed connection (the plugin died, or the Client ended)."""
        return await self.offload(self._managed.translate_closed)

    def is_refusing(self) -> bool:
        """The connection was closed (killed, or the plugin died): calls get closed_error()."""
        return self._managed.refuses_calls() or self._closing is not None

    def check_loop(self) -> None:
        try:
            if asyncio.get_running_loop() is self._loop:  # every call asks: the message is built only off it
                return
        except RuntimeError:
            pass
        wrong = self.off_its_loop(f"this {self._owner_kind}'s calls run on the event loop that started it")
        if wrong is not None:
            raise wrong

    def off_its_loop(self, what: str) -> WrongLoop | None:
        """The WrongLoop to raise when not on the loop that started this channel's client (None: on it);
        ``what`` says what is bound to that loop."""
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is self._loop:
            return None
        owner = self._owner_kind
        ending, sync, done = (("stop()", "Supervisor", "stopped") if owner == "AsyncSupervisor" else
                              ("kill() (close() for a reattached plugin)", "Client", "killed (or closed)"))
        if self._ended:  # already stopped: neither its loop nor a stop is of any use now
            advice = f"; this {owner} was already {done}, so no loop can use it again: make a new {owner}"
        elif self._loop.is_closed():  # no coroutine can run there again: calling from it is no way out
            advice = (f"; that loop has closed (an asyncio.run() that ended), so it cannot be used again: await its"
                      f" {ending} on any loop and make a new {owner} on this one")
        else:
            advice = (f"; call from a coroutine on that loop (one {owner} per event loop; a sync {sync} serves"
                      " any thread)")
        return WrongLoop(what + advice, None, grpc.StatusCode.FAILED_PRECONDITION, sent=False)

    # --- grpc.aio.Channel ------------------------------------------------------------

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: bool | None = False) -> Any:
        return _AioUnaryUnary(self, self._inner.unary_unary, method, request_serializer, response_deserializer)

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return _AioUnaryRequest(self, self._inner.unary_stream, method, request_serializer, response_deserializer,
                                streamed=True)

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return _AioStreamRequest(self, self._inner.stream_unary, method, request_serializer, response_deserializer)

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: bool | None = False) -> Any:
        return _AioStreamRequest(self, self._inner.stream_stream, method, request_serializer, response_deserializer,
                                 streamed=True)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._inner.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        self.check_loop()
        if self.is_refusing():
            raise await self.closed_error()
        try:
            await self._inner.wait_for_state_change(last_observed_state)
        except grpc.aio.UsageError:  # closed meanwhile
            raise await self.closed_error() from None

    async def channel_ready(self) -> None:
        self.check_loop()
        if self.is_refusing():
            raise await self.closed_error()
        try:
            await self._inner.channel_ready()
        except grpc.aio.UsageError:  # closed meanwhile
            raise await self.closed_error() from None

    async def close(self, grace: float | None = None) -> None:
        """User stubs do not own the connection; the AsyncClient closes it in kill()."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class _AioCallable:
    """One method: each call gets the default deadline, and its failures are translated."""

    _scoped_stream = True  # a stream (not unary-unary): a Supervisor's deadline() scope bounds it too

    def __init__(self, owner: AioManagedChannel, factory: Any, method: str, ser: Any, de: Any,
                 streamed: bool = False) -> None:
        self._owner = owner
        self._factory = (factory, method, ser, de)
        self._streamed = streamed  # its answers are a stream: a call dropped unread is cancelled (AioCall)
        self._target: Any = None  # grpc.aio's multicallable, built by the first call (see _built)

    def _built(self) -> Any:
        # Built on the channel's loop once no close has begun (a stub may be made on any thread, at any
        # time): grpc.aio registers the method on its C channel as it builds, without looking whether that
        # channel was destroyed, a use-after-free that aborted a host process once (grpcio 1.85).
        if self._target is None:
            factory, method, ser, de = self._factory
            self._target = factory(method, request_serializer=ser, response_deserializer=de,
                                   _registered_method=True)
        return self._target

    def _call(self, request: Any, timeout: float | None, kwargs: dict[str, Any],
              requests: RequestSource | None = None) -> Any:
        owner = self._owner
        owner.check_loop()  # first: a wrong loop or a closed Client says more than a timeout=0 would
        if owner.is_refusing():
            return RefusedCall(owner.closed_error)  # its error is judged off the loop, when awaited
        try:
            if timeout is not None:  # a ConfigError for what grpc.aio would take as a past deadline
                timeout = call_timeout(timeout)
            if self._scoped_stream:
                timeout = owner._managed.stream_timeout(self._factory[1], timeout)
        except CallTimeout as exc:  # timeout=0, or a spent scope: not sent; raised when awaited, as a timed-out call's
            return refused_now(exc)
        if timeout is None:
            timeout = owner._managed.call_timeout
        try:
            target = self._target if self._target is not None else self._built()
            call = target(request if requests is None else requests.watched(), timeout=timeout, **kwargs)
        except grpc.aio.UsageError:  # closed under us between the check and the call
            return RefusedCall(owner.closed_error)
        return AioCall(call, owner, timeout, requests, streamed=self._streamed)


class _AioUnaryRequest(_AioCallable):
    def __call__(self, request: Any, *, timeout: float | None = None, **kwargs: Any) -> Any:
        return self._call(request, timeout, kwargs)


class _AioUnaryUnary(_AioUnaryRequest):
    _scoped_stream = False

    def __init__(self, owner: AioManagedChannel, factory: Any, method: str, ser: Any, de: Any) -> None:
        super().__init__(owner, factory, method, ser, de)
        self._method = method

    def __call__(self, request: Any, *, timeout: float | None = None, **kwargs: Any) -> Any:
        if self._owner.call_hook is None:  # no resilience layer: straight to the one try
            return self._call(request, timeout, kwargs)
        self._owner.check_loop()
        try:
            timeout = call_timeout(timeout)
        except CallTimeout as exc:  # timeout=0, unsent; a closed Client's refusal says more
            return RefusedCall(self._owner.closed_error) if self._owner.is_refusing() else refused_now(exc)
        return _HookedCall(self._hooked(request, timeout, kwargs))

    async def _hooked(self, request: Any, timeout: float | None, kwargs: dict[str, Any]) -> Any:
        hook = self._owner.call_hook
        if hook is None:  # removed since the call was made
            return await self._call(request, timeout, kwargs)
        # timeout is the caller's (None: none given); attempt(None) gets the default deadline
        return await hook(self._method, lambda t: self._once(request, t, kwargs), timeout)

    async def _once(self, request: Any, timeout: float | None, kwargs: dict[str, Any]) -> Any:
        return await self._call(request, timeout, dict(kwargs))


class TaskCall:
    """A unary call that runs as a task from the moment it is made, as a grpc.aio call does: awaited
    for its response, cancelled, asked whether it is done (a resilience layer's tries, a network
    pool's failover)."""

    def __init__(self, run: Coroutine[Any, Any, Any]) -> None:
        self._task = asyncio.ensure_future(run)
        self._task.add_done_callback(retrieved)  # a call nobody awaits fails quietly, as grpc.aio's does

    def __await__(self) -> Generator[Any, None, Any]:
        return self._task.__await__()

    def cancel(self) -> bool:
        return self._task.cancel()

    def cancelled(self) -> bool:
        return self._task.cancelled()

    def done(self) -> bool:
        return self._task.done()

    def add_done_callback(self, callback: DoneCallback) -> None:
        self._task.add_done_callback(lambda _: callback(self))


class _HookedCall(TaskCall):
    """A unary call run through resilience layers; each try is a call of its own, so there is no one
    call's metadata, code or details."""

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"with retry or circuit-breaker layers installed, an AsyncClient unary call is"
                             f" awaited for its response (each try is a call of its own), so it has no {name!r}")


class _AioStreamRequest(_AioCallable):
    def __call__(self, request_iterator: Any = None, timeout: float | None = None, **kwargs: Any) -> Any:
        # None: the call is written to (write(), done_writing()); Watched: an outer channel's call watches it
        watched = request_iterator is None or isinstance(request_iterator, Watched)  # None: no iterator
        requests = None if watched else RequestSource(request_iterator)
        return self._call(request_iterator, timeout, kwargs, requests)
