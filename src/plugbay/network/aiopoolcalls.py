"""The call objects of the endpoint pool on grpc.aio (plugbay.network.aiopool): awaited, iterated,
read and written like grpc.aio's, each failing over or waiting for an endpoint as poolcalls' rules say (a
server-streaming call whose first read found its endpoint unreachable, as poolstream's: not once its caller
cancel()led it, whose code() then says CANCELLED; a cancel() ends the pick of the next endpoint too, and says
True, the stream being under way; done callbacks stay with the call they were added to)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator
from typing import Any, Protocol

import grpc
import grpc.aio

from plugbay.core.host.aiochannel import TaskCall, off_loop, retrieved
from plugbay.core.host.callerrors import CallTimeout
from plugbay.errors import NoEndpointsError, PlugbayError
from plugbay.network.channelbase import Member
from plugbay.network.poolcalls import (EndpointPool, PoolCallable, Tried, busy, cut_by_drain, ended_ok,
                                       no_endpoints, not_sent, out_of_tries)
from plugbay.network.unsent import channel_failing

WAIT = 0.05  # how often a call that waits for an endpoint asks the pool again
_CANCELLED = "Locally cancelled by application!"  # grpc.aio's details of a call its caller cancelled


class AioPoolCallable(Protocol):
    """What a call needs of its method (plugbay.network.aiopool.AioPoolCallable; a Protocol: no import circle)."""

    rules: PoolCallable
    channel: Any  # the AioPoolChannel: its pool, endpoints and pin

    def start(self, member: Member, request: Any, timeout: float | None,
              kwargs: dict[str, Any]) -> tuple[Any, grpc.aio.Channel]: ...

    async def pick(self, pick_until: float, tried: set[str]) -> Member: ...


def _left(callable: AioPoolCallable, channel: Any, exc: BaseException, asked: bool = False) -> BaseException | None:
    """The typed error of a call that ``exc`` ended when its endpoint left discovery and grpc.aio cut it
    as ``channel``'s close ran out of grace (it cancels the calls left, as a cancel() would); None for any
    other end: a cancel the caller asked for (``asked``, or its task is cancelling) stays a CancelledError.
    Nothing is sent again."""
    if not isinstance(exc, asyncio.CancelledError) or asked:
        return None
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        return None
    key = callable.channel.endpoints.cut(channel) if channel is not None else None
    return cut_by_drain(callable.channel.pool, key) if key is not None else None


class UnaryCall(TaskCall):
    """A unary call through the pool: it runs from the moment it is made (as a task), may go to a second
    endpoint when the first provably never got it, and is awaited for its response. Its metadata, code
    and details are those of its last try."""

    def __init__(self, callable: AioPoolCallable, request: Any, timeout: float | None,
                 kwargs: dict[str, Any]) -> None:
        self._callable = callable
        self._call: Any = None  # the try under way, or the last one
        super().__init__(self._run(request, timeout, kwargs))

    async def _run(self, request: Any, timeout: float | None, kwargs: dict[str, Any]) -> Any:
        rules, pool = self._callable.rules, self._callable.channel.pool
        kwargs = rules.marked(kwargs)
        pick_until, deadline = rules.deadline(timeout)
        tried = Tried()
        last = ""
        pause = 0.05
        busy_call: Any = None  # the try that was refused as busy, whose status ends the call if all are
        while True:
            try:
                member = await self._callable.pick(pick_until, tried)
            except NoEndpointsError as exc:
                raise out_of_tries(pool, exc, tried, last) from None
            channel = None
            each = rules.remaining(deadline, member, last)  # none: raises unsent, member released
            try:
                self._call, channel = self._callable.start(member, request, each, kwargs)
                rules.made(member, tried)  # grpc.aio took it (a closed channel raised UsageError)
                result = await self._call
            except grpc.RpcError as exc:
                pool.done(member, exc)
                if not not_sent(exc, self._callable.channel.endpoints.existing(member), pool.token):
                    raise
                busy_call = self._call if busy(exc) else busy_call
                try:  # the verdict may wait for a TLS probe (up to 1 s): not on the loop
                    last, wait = await off_loop(self._callable.channel.endpoints.executor, rules.refused, member,
                                                exc, tried, pick_until, pause)
                except grpc.RpcError as end:
                    if end is tried.busy_refusal:  # every endpoint refused, one as busy: the call is that try
                        self._call = busy_call
                    raise
                if wait:
                    await asyncio.sleep(wait)
                    pause = min(pause * 2, 0.5)
                continue
            except grpc.aio.UsageError:  # the client was killed under the call
                pool.done(member, None)
                raise no_endpoints(pool, "the client was killed or closed", closed=True) from None
            except BaseException as exc:
                pool.done(member, exc)
                if (left := _left(self._callable, channel, exc)) is not None:
                    raise left from None
                raise
            pool.done(member, None, ok=True)
            return result

    def time_remaining(self) -> float | None:
        return self._call.time_remaining() if self._call is not None else None

    async def wait_for_connection(self) -> None:
        while self._call is None and not self._task.done():
            await asyncio.sleep(WAIT / 5)  # the first try is made as soon as an endpoint is picked
        if self._call is not None:
            await self._call.wait_for_connection()

    async def _ended(self) -> BaseException | None:
        try:
            await asyncio.shield(self._task)
        except BaseException as exc:  # noqa: BLE001 (how it ended is what the caller asks)
            return exc
        return None

    async def code(self) -> grpc.StatusCode:
        error = await self._ended()
        if self._call is not None and not isinstance(error, PlugbayError):  # typed here: its own code
            return await self._call.code()
        if isinstance(error, grpc.RpcError):
            code: grpc.StatusCode = error.code()
            return code
        return grpc.StatusCode.CANCELLED if isinstance(error, asyncio.CancelledError) else grpc.StatusCode.OK

    async def details(self) -> str:
        error = await self._ended()
        if self._call is not None and not isinstance(error, PlugbayError):
            return str(await self._call.details())
        return str(error.details()) if isinstance(error, grpc.RpcError) else ""

    async def initial_metadata(self) -> Any:
        await self._ended()
        return await self._call.initial_metadata() if self._call is not None else grpc.aio.Metadata()

    async def trailing_metadata(self) -> Any:
        await self._ended()
        return await self._call.trailing_metadata() if self._call is not None else grpc.aio.Metadata()


class StreamCall:
    """A streaming call through the pool, on the endpoint picked when it is made; when none is available
    then, the call waits for one (within its deadline) as a task, and its steps wait for that."""

    def __init__(self, callable: AioPoolCallable, request: Any, timeout: float | None,
                 kwargs: dict[str, Any]) -> None:
        self._callable = callable
        self._call: Any = None
        self._channel: Any = None
        self._asked = False  # cancel() was called: its CancelledError is no cut (_left)
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
            member = callable.channel.pool.try_pick(pick_until, set(), callable.channel.pin)
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
        self._begin(await self._callable.pick(pick_until, set()), request, deadline, kwargs)

    def _begin(self, member: Member, request: Any, deadline: float | None, kwargs: dict[str, Any]) -> None:
        pool = self._callable.channel.pool
        left = self._callable.rules.remaining(deadline, member)  # none: raises unsent, member released
        try:
            self._call, self._channel = self._callable.start(member, request, left, kwargs)
        except BaseException as exc:
            pool.done(member, exc)
            raise
        self._member, self._failing = member, None
        self._call.add_done_callback(lambda call: self._ended(pool, member, call))

    def _ended(self, pool: EndpointPool, member: Member, call: Any) -> None:
        if call is self._call:  # noted now: the first read, which judges a resend, may come much later
            self._failing = channel_failing(self._callable.channel.endpoints.existing(member))
        _report(pool, member, call)

    def _unsent(self, exc: BaseException) -> bool:
        """Whether the failed first read ``exc`` provably never left its endpoint, and may go to another."""
        rules, channel, member = self._callable.rules, self._callable.channel, self._member
        return (not self._answered and isinstance(exc, grpc.RpcError) and rules._kind == "unary_stream"
                and channel.pin is None and member is not None
                and not_sent(exc, channel.endpoints.existing(member), channel.pool.token, self._failing))

    async def _resend(self, exc: BaseException) -> bool:
        """Whether a server-streaming call whose first read failed with ``exc``, which provably never left its
        endpoint, is now on another one (plugbay.network.poolstream's rule, as the sync pool has it)."""
        if not self._unsent(exc):
            return False
        if self._asked:  # the caller cancelled the stream: it ends as a cancelled grpc.aio call does
            raise asyncio.CancelledError()
        rules, channel, member = self._callable.rules, self._callable.channel, self._member
        assert member is not None  # _unsent() says so
        if not self._tried.refused_unsent(member.key, channel.pool.pickable_keys()):
            return False  # no other endpoint to go to: the failure is the answer
        request, pick_until, deadline, kwargs = self._again
        try:
            member = await self._pick(pick_until)
            if self._asked:  # cancel() came as the pick ended, before this read went on: nothing is sent again
                channel.pool.release(member)
                raise asyncio.CancelledError()
            self._begin(member, request, deadline, kwargs)
        except (NoEndpointsError, grpc.RpcError):
            if self._asked:  # cancel() came while none took it: the cancel is how the stream ended
                raise asyncio.CancelledError() from None
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
        """One step of the started call, cut typed when its endpoint left (see _left)."""
        try:
            return await step
        except asyncio.CancelledError as exc:
            if (left := _left(self._callable, self._channel, exc, self._asked)) is not None:
                raise left from None
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
                if (left := _left(self._callable, self._channel, exc, self._asked)) is not None:
                    raise left from None
                raise

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
            self._stopped = True
            return True
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

    def add_done_callback(self, callback: Any) -> None:
        if self._call is not None:
            self._call.add_done_callback(lambda _: callback(self))
        elif self._ready is not None:  # once the call is made, when it ends; or now, if no call came
            self._ready.add_done_callback(lambda ready: self._then(ready, callback))

    def _then(self, ready: asyncio.Future[None], callback: Any) -> None:
        if self._call is not None and not ready.cancelled() and ready.exception() is None:
            self._call.add_done_callback(lambda _: callback(self))
        else:
            callback(self)

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

