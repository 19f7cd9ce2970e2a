"""One grpc.aio call of an AsyncClient's channel (plugbay.core.host.aiochannel): its results, reads and
writes raise typed errors, judged by the channel's owner, and a stream whose request iterator raised
raises that error (plugbay.core.transport.requestsource), as the caller's own code raised it."""

from __future__ import annotations

import asyncio
import functools
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any, Protocol, TypeVar

import grpc
import grpc.aio

from plugbay.core.host.channel import ManagedChannel, timed
from plugbay.core.transport.causes import caused
from plugbay.core.transport.requestsource import ITERATING_FAILED, RequestSource

_T = TypeVar("_T")
# a done callback: given the call (grpc.aio's, or the object the caller holds), its result ignored
DoneCallback = Callable[[Any], object]


class CallOwner(Protocol):
    """What a call needs of its channel (aiochannel's AioManagedChannel, which imports this module)."""

    _loop: asyncio.AbstractEventLoop
    _managed: ManagedChannel
    _closing: asyncio.Future[None] | None

    async def translate(self, exc: grpc.RpcError, past_deadline: bool, left: float | None = None) -> BaseException:
        ...


# grpc.aio's own status for a message it could not send because the connection failed under the write
# (a plugin that died mid-stream): exactly these details, set locally, never a status the plugin sent
_SEND_FAILED = "Internal error from Core"


def lost_send(exc: grpc.RpcError) -> grpc.RpcError:
    """A write's failure: grpc.aio's local INTERNAL for a send the connection failed under is a lost
    connection (UNAVAILABLE, judged by the plugin's exit); anything else stays what it is."""
    if exc.code() == grpc.StatusCode.INTERNAL and exc.details() == _SEND_FAILED:
        return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                    details=f"{_SEND_FAILED}: the connection failed under a write")
    return exc


def cancel_when_dropped(holder: object, loop: asyncio.AbstractEventLoop, call: Any) -> None:
    """Cancel ``call`` (a grpc.aio call, or one with its cancel() and done()) on ``loop`` once ``holder``, the
    object its caller was given, is dropped before the call ended: AioCall's streams and the network pool's
    (plugbay.network.aiopoolstream) alike. ``holder`` must be outside the call's own cycle (no done callback of
    the call may hold it), or it goes only when the garbage collector finds that cycle."""
    weakref.finalize(holder, _cancel_dropped, weakref.ref(loop), weakref.ref(call)).atexit = False


def abandoned_error() -> asyncio.InvalidStateError:
    """What a read of a stream raises once the `async with` block over it ended before the stream did (the
    block's end cancelled it): not a CancelledError, which the reader's task would take for its own cancel."""
    return asyncio.InvalidStateError(
        "this stream was cancelled when the `async with` block over it ended before the stream did:"
        " leaving the block ends the call. To go on reading it after the block, make the call without"
        " `async with` (a stream kept in a variable is cancelled only when dropped, or by cancel())")


class HeldCallbacks:
    """A stream's done callbacks, held by the object its caller was given (an AioCall, a pool's StreamCall) while
    that lives, not by grpc.aio's call: until the call ends, grpc.aio's pending status holds the call and its
    callbacks, so a callback that refers to the stream (a closure over it) held the stream too: never dropped,
    so never cancelled, an endless one for the process's life. Held here, such a callback and the stream are a
    cycle of their own, which the garbage collector ends (the stream is then cancelled, as when dropped); the
    callbacks still run when the call ends: hand_over() gives them to the call as their holder goes."""

    def __init__(self, call: Any, loop: asyncio.AbstractEventLoop, given: object | None = None) -> None:
        self.call = call
        self._loop = loop
        # what a callback is given: ``given`` (held weakly: it holds this), else grpc.aio's call, as grpc.aio does
        self._given = None if given is None else weakref.ref(given)
        self._waiting: list[DoneCallback] = []

    def add(self, callback: DoneCallback) -> None:
        """grpc.aio's add_done_callback: ``callback`` runs once the call is done (at once if it is)."""
        self._waiting.append(callback)
        if len(self._waiting) == 1:  # one relay per wait, holding these callbacks weakly
            self.call.add_done_callback(functools.partial(_run_waiting, weakref.ref(self)))

    def hand_over(self, given: object | None = None, cancel: bool = False) -> None:
        """Their holder is going (its __del__, on any thread): the call holds the callbacks from now on, added on
        its loop (grpc.aio's calls belong there); a closed loop runs nothing any more. ``given``: the holder,
        when the callbacks are given it: they keep it (resurrected) until they ran. ``cancel``: the holder's
        call is one cancelled when dropped (cancel_when_dropped: its answers are a stream), cancelled here,
        after the callbacks are handed over: a holder they keep would else never be dropped, and so never
        cancel its call (a client-streaming call runs to its end, as grpc.aio's does, cancel or not)."""
        waiting, self._waiting = self._waiting, []
        if given is not None:
            # a collection cleared the weak ref to ``given`` before its __del__ ran, and another holder's hand_over
            # (an AioCall's around it) may add callbacks here after this one: they are given the resurrected holder
            self._given = weakref.ref(given)
            waiting = [functools.partial(_given_to, callback, given) for callback in waiting]
        if waiting:
            try:
                self._loop.call_soon_threadsafe(_hand_to, self.call, waiting, cancel)
            except RuntimeError:
                pass


def _run_waiting(held_ref: weakref.ref[HeldCallbacks], call: Any) -> None:
    held = held_ref()
    if held is None:  # handed over to the call (hand_over), which runs them itself
        return
    given = call if held._given is None else held._given()
    waiting, held._waiting = held._waiting, []
    for callback in waiting:
        callback(given)


def _given_to(callback: DoneCallback, given: object, _call: Any) -> None:
    callback(given)


def _hand_to(call: Any, callbacks: list[DoneCallback], cancel: bool) -> None:
    for callback in callbacks:
        call.add_done_callback(callback)
    if cancel:
        _cancel_unfinished(call)


def _cancel_dropped(loop_ref: weakref.ref[asyncio.AbstractEventLoop], call_ref: weakref.ref[Any]) -> None:
    """A stream's holder (an AioCall, a pool's StreamCall) was dropped: nobody can read the call any more.
    grpc.aio's call holds itself in a cycle (its own response iterator), so without this the plugin's handler and
    the HTTP/2 stream would run on until the garbage collector found it. The last reference may go on any thread
    (or in a collection): cancel() of a grpc.aio call belongs on its loop."""
    # both held weakly: the finalizer's registry would else keep them (and a loop's descriptors) for as long as
    # the wrapper lives, for ever where the call itself refers back to the wrapper (a pool stream's callbacks)
    loop, call = loop_ref(), call_ref()
    if loop is None or call is None:  # collected already: nothing runs on it any more
        return
    try:
        loop.call_soon_threadsafe(_cancel_unfinished, call)
    except RuntimeError:  # the loop closed: the call stays open until its client is closed or killed
        pass


def _cancel_unfinished(call: Any) -> None:
    if not call.done():
        call.cancel()


class AioCall:
    """A grpc.aio call whose results raise translated errors; the rest (metadata, cancel) delegates.
    A ``streamed`` call (its answers a stream) is cancelled when this wrapper is dropped before its end, as a
    Python generator is closed when dropped: not when one of its iterators is (see __aiter__)."""

    # per call only when set (a unary call's wrapper is made for every call and rarely sets them)
    _abandoned = False  # cancelled by plugbay: an `async with` block over it ended before it did
    _done_callbacks: HeldCallbacks | None = None  # made by the first add_done_callback()
    _hand_over: _HandOver | None = None  # ... with this, which hands them to the call as the wrapper goes

    def __init__(self, call: Any, owner: CallOwner, timeout: float | None,
                 requests: RequestSource | None = None, streamed: bool = False) -> None:
        self._call = call
        self._requests = requests
        self._owner = owner
        self._timeout = timeout
        self._started = time.monotonic()  # asyncio loop.time()'s clock, without a method call on every call
        self._streamed = streamed
        if streamed:  # the wrapper is outside grpc.aio's cycle, so it goes when its holder lets go of it
            cancel_when_dropped(self, owner._loop, call)

    def __await__(self) -> Generator[Any, None, Any]:
        # a coroutine around _step, not one generator of its own: _step holds the typed errors in one place,
        # and awaiting a stream (no __await__) stays the TypeError grpc.aio gives
        return self._result().__await__()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _step(self, step: Awaitable[_T], sending: bool = False) -> _T:
        """Await one step of the call (its result, a read, a write), its failures typed."""
        try:
            return await step
        except grpc.RpcError as exc:
            raise caused(await self._translated(lost_send(exc) if sending else exc), exc)
        except asyncio.CancelledError:
            if not self._iterator_raised():
                raise await self._cancelled() from None
        # out of the except block, so the caller's error keeps its own __cause__ and __context__; never held
        # in a local, which its traceback (this frame) would hold in a cycle
        raise await self._iterators_error()

    async def _result(self) -> Any:
        try:
            return await self._step(self._call)
        finally:
            managed = self._owner._managed
            if managed.after_call is not None:
                managed.run_after_call()  # the held streams begin, as after the sync side's first call

    async def _iterate(self) -> AsyncIterator[Any]:
        # An iterator that a loop left early (break) is closed later by asyncio (it schedules its aclose()),
        # which ends only the iterator: the call goes on from where it was for the next `async for`, as
        # grpc.aio's does (its one response iterator is shared). The call ends when this wrapper is dropped.
        try:
            async for item in self._call:
                yield item
            return
        except grpc.RpcError as exc:
            raise caused(await self._translated(exc), exc)
        except asyncio.CancelledError:
            if not self._iterator_raised():
                raise await self._cancelled() from None
        raise await self._iterators_error()  # as in _step

    async def __aenter__(self) -> AioCall:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._abandon()  # the block is done with the call, however it ended: so is the plugin

    def _abandon(self) -> None:
        """Cancel the call for its `async with` block, which ended before the call did (done: nothing to end)."""
        if not self._call.done():
            self._abandoned = True
            self._call.cancel()

    async def read(self) -> Any:
        return await self._step(self._call.read())

    async def write(self, request: Any) -> None:
        try:
            await self._step(self._call.write(request), sending=True)
        except asyncio.InvalidStateError:
            if not self._call.done():  # a write after done_writing(): the caller's own misuse
                raise
            raise await self._ended() from None  # grpc.aio: "RPC already finished": how it ended

    async def done_writing(self) -> None:
        await self._step(self._call.done_writing(), sending=True)

    async def _ended(self) -> BaseException:
        """A write to a call that had ended: how it ended (typed), or the misuse it is when it ended well."""
        code = await self._call.code()
        if code == grpc.StatusCode.OK:
            return asyncio.InvalidStateError("the call had already finished (OK) when write() was asked")
        if code == grpc.StatusCode.CANCELLED and self._call.cancelled():
            return await self._cancelled()
        ended = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                     details=await self._call.details())
        return await self._translated(ended)

    def _iterator_raised(self) -> bool:
        """A local cancel is grpc.aio's own, for the request iterator's error; not when the caller's own task
        is being cancelled: that cancel goes on."""
        task = asyncio.current_task()
        if self._requests is None or (task is not None and task.cancelling()) or not self._call.cancelled():
            return False
        return self._requests.raised()

    async def _iterators_error(self) -> BaseException:
        """What the request iterator raised (once _iterator_raised() said it did); for an error that is not
        the caller's own (requestsource.callers_own), the call's own UNKNOWN, as grpcio fails a sync call."""
        if self._requests is None:
            return asyncio.CancelledError()
        upstream = self._requests.take_upstream()
        if upstream is None:
            return self._requests.take_error()
        ended = grpc.aio.AioRpcError(grpc.StatusCode.UNKNOWN, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                     details=ITERATING_FAILED)
        ended.__cause__ = upstream
        return caused(await self._translated(ended), ended)

    async def _cancelled(self) -> BaseException:
        """grpc.aio cancels the calls of a channel closed under them: that is the plugin's exit or
        the Client's end, typed as on the sync side; a cancel of the caller's own task stays one."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            return asyncio.CancelledError()
        if self._abandoned:  # not a cancel of the reader's task: a CancelledError would pass for one
            return abandoned_error()
        if self._owner._closing is None:
            return asyncio.CancelledError()
        closed = grpc.aio.AioRpcError(grpc.StatusCode.CANCELLED, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                      details="the connection was closed under the call")
        return await self._owner.translate(closed, False)

    async def _translated(self, exc: grpc.RpcError) -> BaseException:
        spent = time.monotonic() - self._started
        past = self._timeout is not None and spent >= self._timeout * 0.98
        return timed(await self._owner.translate(exc, past, None if self._timeout is None else self._timeout - spent),
                     self._timeout)

    def add_done_callback(self, callback: DoneCallback) -> None:
        """As grpc.aio's (``callback`` is given the call under this wrapper), held by this wrapper while it lives
        (HeldCallbacks: one that refers to the stream no longer keeps it from being cancelled when dropped)."""
        if self._done_callbacks is None:
            self._done_callbacks = HeldCallbacks(self._call, self._owner._loop)
            self._hand_over = _HandOver(self._done_callbacks, self._streamed)
        self._done_callbacks.add(callback)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class _HandOver:
    """Hands an AioCall's done callbacks to its call as the wrapper goes: held by the wrapper alone, so it goes
    with it. Not a __del__ of the wrapper's own, which every AioCall then had though only one given a done
    callback needs it: a failed call's wrapper, in a cycle with the frames its error's traceback holds, then
    outlived the collection at a test run's end (measured: a second one freed it), and with it its client's
    grpc.aio channel, poller and socket pair."""

    def __init__(self, held: HeldCallbacks, cancel: bool) -> None:
        self._held = held
        self._cancel = cancel

    def __del__(self) -> None:
        # a stream's call is cancelled here too, not only by its finalizer (cancel_when_dropped): a callback
        # that refers to the wrapper, handed to the call, would keep it alive, and the finalizer from ever
        # running, wherever this comes first (CPython's collector happens to run weakref callbacks first)
        self._held.hand_over(cancel=self._cancel)
