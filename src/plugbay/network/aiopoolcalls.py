"""The unary call of the endpoint pool on grpc.aio (plugbay.network.aiopool), awaited like grpc.aio's and failing
over or waiting for an endpoint as poolcalls' rules say, and what its streaming calls share (aiopoolstream)."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import grpc
import grpc.aio

from plugbay.core.host.aiochannel import TaskCall, off_loop
from plugbay.errors import NoEndpointsError, PlugbayError
from plugbay.network.channelbase import Member
from plugbay.network.poolcalls import PoolCallable, Tried, busy, cut_by_drain, no_endpoints, not_sent, out_of_tries

WAIT = 0.05  # how often a call that waits for an endpoint asks the pool again


class AioPoolCallable(Protocol):
    """What a call needs of its method (plugbay.network.aiopool.AioPoolCallable; a Protocol: no import circle)."""

    rules: PoolCallable
    channel: Any  # the AioPoolChannel: its pool, endpoints and pin
    kind: str  # grpc.aio's name of the method's kind: "unary_unary", "unary_stream", ...

    def start(self, member: Member, request: Any, timeout: float | None,
              kwargs: dict[str, Any]) -> tuple[Any, grpc.aio.Channel]: ...

    async def pick(self, pick_until: float, tried: Tried) -> Member: ...


def left_error(callable: AioPoolCallable, channel: Any, exc: BaseException,
               asked: bool = False) -> BaseException | None:
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
                if (left := left_error(self._callable, channel, exc)) is not None:
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
