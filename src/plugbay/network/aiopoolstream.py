"""The streaming call of the endpoint pool on grpc.aio (plugbay.network.aiopool): iterated, read and written
like grpc.aio's, waiting for an endpoint as poolcalls' rules say. A server-streaming call whose first read
found its endpoint unreachable goes to another, as poolstream's: not once its caller cancel()led it, whose
code() then says CANCELLED; a cancel() ends the pick of the next endpoint too, and says True, the stream being
under way; once a read raised the call's failure, its status stands (a later cancel() leaves it). Done
callbacks stay with the call they were added to. As an AsyncClient's stream (plugbay.core.host.aiocall), one
whose answers are a stream is cancelled when dropped before its end (a client-streaming call runs to its end, as
grpc.aio's does), and a read after the `async with` block that cancelled it raises that one's InvalidStateError."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Generator
from typing import Any

import grpc
import grpc.aio

from plugbay.core.host.aiocall import DoneCallback, HeldCallbacks, abandoned_error, cancel_when_dropped
from plugbay.core.host.aiochannel import retrieved
from plugbay.core.host.callerrors import CallTimeout
from plugbay.errors import NoEndpointsError
from plugbay.network.aiopoolcalls import AioPoolCallable, left_error
from plugbay.network.channelbase import Member
from plugbay.network.poolcalls import EndpointPool, Tried, ended_ok, not_sent
from plugbay.network.unsent import channel_failing

_CANCELLED = "Locally cancelled by application!"  # grpc.aio's details of a call its caller cancelled


def _calls_loop() -> asyncio.AbstractEventLoop:
    """The loop a grpc.aio call made here runs on: the running one, else (a stub called off a running loop, read
    later under run_until_complete) the thread's event loop, as grpc.aio's own calls take it."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.get_event_loop()


class StreamCall:
    """A streaming call through the pool, on the endpoint picked when it is made; when none is available
    then, the call waits for one (within its deadline) as a task, and its steps wait for that."""

    def __init__(self, callable: AioPoolCallable, request: Any, timeout: float | None,
                 kwargs: dict[str, Any]) -> None:
        # its calls are made, and end, on this loop: their drop-cancel and done callbacks go to it, from whatever
        # thread the stream is dropped on
        self._loop = _calls_loop()
        self._callable = callable
        # its answers are a stream: cancelled when dropped before its end (nobody can read the rest), as an
        # AsyncClient's; a client-streaming call's one answer is not: it runs to its end, as grpc.aio's does
        self._streamed = callable.kind in ("unary_stream", "stream_stream")
        self._call: Any = None
        self._callbacks: list[HeldCallbacks] = []  # the done callbacks of each call it made (see add_done_callback)
        self._channel: Any = None
        self._asked = False  # cancel() was called: its CancelledError is no cut (left_error)
        self._abandoned = False  # cancelled by the end of an `async with` block over it: reads say so (_cancel)
        self._ready: asyncio.Future[None] | None = None
        pick_until, deadline = callable.rules.deadline(timeout)
        # what a resend needs (a server-streaming call whose first read failed unsent: _resend)
        self._again = (request, pick_until, deadline, kwargs)
        self._tried = Tried()
        self._member: Member | None = None
        self._answered = False
        self._picking: asyncio.Future[Member] | None = None  # a resend's pick under way (cancel() ends it)
        self._stopped = False  # cancel() ended a resend's pick: the stream was cancelled, not its ended call
        self._failing: bool | None = None  # the call's channel was failing when the call ended
        self._raised = False  # a read raised the call's failure: its status stands (as a grpc.aio call's)
        member: Member | None = None
        failed: BaseException | None = None
        try:
            member = callable.channel.pool.try_pick(pick_until, self._tried, callable.channel.pin)
        except grpc.RpcError as exc:  # no endpoint, TLS refused: raised when awaited, as grpc.aio does
            failed = exc
        if member is not None:
            try:
                self._begin(member, request, deadline, kwargs)
                return
            except CallTimeout as exc:  # a deadline spent already (a tiny timeout=): raised when awaited
                failed = exc
        self._ready = asyncio.ensure_future(self._later(failed, pick_until, request, deadline, kwargs))
        self._ready.add_done_callback(retrieved)

    async def _later(self, failed: BaseException | None, pick_until: float, request: Any, deadline: float | None,
                     kwargs: dict[str, Any]) -> None:
        if failed is not None:
            raise failed
        self._begin(await self._callable.pick(pick_until, self._tried), request, deadline, kwargs)

    def _begin(self, member: Member, request: Any, deadline: float | None, kwargs: dict[str, Any]) -> None:
        pool = self._callable.channel.pool
        left = self._callable.rules.remaining(deadline, member)  # none: raises unsent, member released
        try:
            self._call, self._channel = self._callable.start(member, request, left, kwargs)
        except BaseException as exc:
            pool.done(member, exc)
            raise
        self._member, self._failing = member, None
        # the call's done callback holds this stream weakly: held strongly, it put the stream in grpc.aio's
        # cycle, so a stream dropped unread ran on until the garbage collector came
        stream = weakref.ref(self)
        self._call.add_done_callback(lambda call: _ended(stream, pool, member, call))
        if self._streamed:  # cancelled when dropped before its end, as an AsyncClient's stream is
            cancel_when_dropped(self, self._loop, self._call)

    def _unsent(self, exc: BaseException) -> bool:
        """Whether the failed first read ``exc`` provably never left its endpoint, and may go to another (not
        once a read raised the failure: a next read raises it again, as grpc.aio's does)."""
        rules, channel, member = self._callable.rules, self._callable.channel, self._member
        return (not self._answered and not self._raised and isinstance(exc, grpc.RpcError)
                and rules._kind == "unary_stream"
                and channel.pin is None and member is not None
                and not_sent(exc, channel.endpoints.existing(member), channel.pool.token, self._failing))

    async def _resend(self, exc: BaseException) -> bool:
        """Whether a server-streaming call whose first read failed with ``exc``, which provably never left its
        endpoint, is now on another one (plugbay.network.poolstream's rule, as the sync pool has it)."""
        if not self._unsent(exc):
            return False
        if self._asked:  # the caller cancelled the stream: it ends as a cancelled grpc.aio call does
            raise self._cancel()
        rules, channel, member = self._callable.rules, self._callable.channel, self._member
        assert member is not None  # _unsent() says so
        if not self._tried.refused_unsent(member.key, channel.pool.pickable_keys()):
            return False  # no other endpoint to go to: the failure is the answer
        request, pick_until, deadline, kwargs = self._again
        try:
            member = await self._pick(pick_until)
            if self._asked:  # cancel() came as the pick ended, before this read went on: nothing is sent again
                channel.pool.release(member)
                raise self._cancel()
            self._begin(member, request, deadline, kwargs)
        except (NoEndpointsError, grpc.RpcError):
            if self._asked:  # cancel() came while none took it: the cancel is how the stream ended
                raise self._cancel() from None
            return False  # none took it in time: the first failure says what happened
        rules.made(member, self._tried)
        return True

    async def _pick(self, pick_until: float) -> Member:
        """The resend's endpoint, waited for as a task a cancel() ends (as it ends a grpc.aio call's read)."""
        self._picking = picking = asyncio.ensure_future(self._callable.pick(pick_until, self._tried))
        try:
            return await picking
        except asyncio.CancelledError:
            if picking.done() and not picking.cancelled() and picking.exception() is None:
                self._callable.channel.pool.release(picking.result())  # picked as the caller's task was cancelled
            # the caller's task cancelled (or cancel()): the stream is, as grpc.aio cancels a call whose read is
            self._asked = self._stopped = True
            raise
        finally:
            self._picking = None

    async def _cut(self) -> bool:
        """Cancelled by its caller, on a call that ended unsent, before a read raised its failure: no resend,
        its read raises CancelledError."""
        call, over = self._call, (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED)  # no failure to judge
        if self._raised or not self._asked or not call.done() or (code := await call.code()) in over:
            return False
        ended = grpc.aio.AioRpcError(code, await call.initial_metadata(), await call.trailing_metadata(),
                                     details=await call.details())
        return self._unsent(ended)

    async def _started(self) -> Any:
        if self._ready is not None:
            await self._ready
        return self._call

    def __await__(self) -> Generator[Any, None, Any]:
        return self._response().__await__()

    async def _step(self, step: Any) -> Any:
        """One step of the started call, cut typed when its endpoint left (see left_error)."""
        try:
            return await step
        except asyncio.CancelledError as exc:
            if (instead := self._read_cancelled(exc)) is not None:
                raise instead from None
            raise

    async def _response(self) -> Any:
        return await self._step(await self._started())

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            call = await self._started()
            try:
                async for item in call:
                    self._answered = True
                    yield item
                return
            except grpc.RpcError as exc:
                if not await self._resend(exc):
                    self._raised = True
                    raise
            except asyncio.CancelledError as exc:
                if (instead := self._read_cancelled(exc)) is not None:
                    raise instead from None
                raise

    async def __aenter__(self) -> StreamCall:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if not self.done():  # the block is done with the stream, however it ended: so is the replica
            self._abandoned = True
            self.cancel()

    def _read_cancelled(self, exc: asyncio.CancelledError) -> BaseException | None:
        """What a read that the cancel ``exc`` ended raises instead (None: ``exc`` itself): the endpoint's leaving
        (left_error), or the `async with` block's end (see _cancel)."""
        left = left_error(self._callable, self._channel, exc, self._asked)
        return left if left is not None else self._cancel() if self._abandoned and not _cancelling() else None

    def _cancel(self) -> BaseException:
        """The error of a read of the stream cancel() ended: a CancelledError, as grpc.aio's read raises; once an
        `async with` block's end cancelled it, an AsyncClient stream's InvalidStateError (a CancelledError would
        pass for a cancel of the reader's own task), unless that task is being cancelled."""
        return abandoned_error() if self._abandoned and not _cancelling() else asyncio.CancelledError()

    async def read(self) -> Any:
        while True:
            call = await self._started()
            try:
                answer = await self._step(call.read())
            except grpc.RpcError as exc:
                if await self._resend(exc):
                    continue
                self._raised = True
                raise
            self._answered = True
            return answer

    async def write(self, request: Any) -> None:
        call = await self._started()
        await self._step(call.write(request))

    async def done_writing(self) -> None:
        call = await self._started()
        await self._step(call.done_writing())

    def cancel(self) -> bool:
        self._asked = True
        if self._picking is not None:  # a resend's pick, also one that just ended: the stream is under way
            self._picking.cancel()
            first, self._stopped = not self._stopped, True
            return first  # a second cancel() cancels nothing, as gRPC's says
        if self._call is not None:
            return bool(self._call.cancel())
        return self._ready is not None and self._ready.cancel()

    def cancelled(self) -> bool:
        if self._stopped:
            return True
        if self._call is not None:
            return bool(self._call.cancelled())
        # a wait for an endpoint that cancel() cancelled ends at the loop's next step; grpc.aio's call at once
        return self._ready is not None and (self._ready.cancelled() or (self._asked and not self._ready.done()))

    def done(self) -> bool:
        if self._call is not None:
            return bool(self._call.done())
        return self._ready is None or self._ready.done() or self._asked

    def add_done_callback(self, callback: DoneCallback) -> None:
        """``callback(self)`` once the current call ends; held by this stream, not by grpc.aio's call, so a stream
        dropped with callbacks is cancelled as one without (aiocall.HeldCallbacks, as an AsyncClient's stream)."""
        if self._call is not None:
            self._held(self._call).add(callback)
        elif self._ready is not None:  # once the call is made, when it ends; or now, if no call came
            self._ready.add_done_callback(lambda ready: self._then(ready, callback))

    def _then(self, ready: asyncio.Future[None], callback: DoneCallback) -> None:
        if self._call is not None and not ready.cancelled() and ready.exception() is None:
            self._held(self._call).add(callback)
        else:
            callback(self)

    def _held(self, call: Any) -> HeldCallbacks:
        if not self._callbacks or self._callbacks[-1].call is not call:
            self._callbacks.append(HeldCallbacks(call, self._loop, given=self))
        return self._callbacks[-1]

    def __del__(self) -> None:
        for held in self.__dict__.get("_callbacks", ()):
            held.hand_over(self, cancel=self._streamed)

    def time_remaining(self) -> float | None:
        return self._call.time_remaining() if self._call is not None else None

    async def wait_for_connection(self) -> None:
        await (await self._started()).wait_for_connection()

    async def _failed(self) -> BaseException | None:
        try:
            await self._started()
        except BaseException as exc:  # noqa: BLE001 (the wait for an endpoint is how it ended)
            return exc
        return None

    async def code(self) -> grpc.StatusCode:
        error = await self._failed()
        if error is None:
            return grpc.StatusCode.CANCELLED if await self._cut() else await self._call.code()
        return error.code() if isinstance(error, grpc.RpcError) else grpc.StatusCode.CANCELLED

    async def details(self) -> str:
        error = await self._failed()
        if error is None:
            return _CANCELLED if await self._cut() else str(await self._call.details())
        return str(error.details()) if isinstance(error, grpc.RpcError) else _CANCELLED

    async def initial_metadata(self) -> Any:
        return await self._call.initial_metadata() if await self._failed() is None else grpc.aio.Metadata()

    async def trailing_metadata(self) -> Any:
        return await self._call.trailing_metadata() if await self._failed() is None else grpc.aio.Metadata()


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _ended(stream_ref: weakref.ref[StreamCall], pool: EndpointPool, member: Member, call: Any) -> None:
    stream = stream_ref()
    if stream is not None and call is stream._call:  # noted now: the first read, which judges a resend, comes later
        stream._failing = channel_failing(stream._callable.channel.endpoints.existing(member))
    _report(pool, member, call)


def _report(pool: EndpointPool, member: Member, call: Any) -> None:
    """A stream ended: tell the pool how (its code, read once the call is done, on the loop)."""
    if call.cancelled():
        pool.done(member, None)
        return

    async def report() -> None:
        code, details = await call.code(), await call.details()
        # a stream that ran to its deadline was bounded by its caller (a watch): no fault of the endpoint;
        # its trailers go with the status (a handler's own, core/protocol/handlerstatus.py, is no fault either)
        error = None if code in (grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED) else grpc.aio.AioRpcError(
            code, grpc.aio.Metadata(), await call.trailing_metadata(), details=details)
        pool.done(member, error, ok=ended_ok(code))

    asyncio.ensure_future(report()).add_done_callback(retrieved)

