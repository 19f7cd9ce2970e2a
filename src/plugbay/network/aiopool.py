"""The endpoint pool on grpc.aio: an AsyncRemoteClient's calls, on the caller's event loop.

Only the calls' I/O is here. Discovery, health checks, ejection and the
bookkeeping of picks stay the sync EndpointPool's (plugbay.network.pool, on its
threads), and what a failure means is decided by the code the sync calls use
(plugbay.network.poolcalls), so a call picks, fails over and fails the same way
on either side. Each endpoint gets a grpc.aio channel of its own, dialed like
its sync channel (``Member.redial``), when a call first picks it; once
discovery drops the endpoint, that channel closes when its calls end (at most
the pool's ``drain_timeout`` later). A unary call that never left an endpoint
goes to another within its deadline; a stream goes to the endpoint picked when
it is made (waiting for one, within its deadline, without blocking the loop).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Generator
from typing import Any

import grpc
import grpc.aio

from plugbay.errors import ConfigError, NoEndpointsError
from plugbay.network.channelbase import Member
from plugbay.network.pool import EndpointPool
from plugbay.network.poolcalls import NoEndpoints, PoolCallable, no_endpoints, not_sent

_WAIT = 0.05  # how often a call that waits for an endpoint asks the pool again


class AioEndpoints:
    """The grpc.aio channel of each endpoint calls went to (used on the event loop's thread only)."""

    def __init__(self, pool: EndpointPool) -> None:
        self.pool = pool
        self._channels: dict[str, tuple[Member, grpc.aio.Channel]] = {}
        self._retiring: set[asyncio.Future[None]] = set()
        self._generation = -1
        self.closed = False

    def channel(self, member: Member) -> grpc.aio.Channel:
        if self.closed:
            raise grpc.aio.UsageError("the client's channels are closed")
        if self._generation != self.pool.generation:
            self._prune()
        held = self._channels.get(member.key)
        if held is not None and held[0] is member:
            return held[1]
        if held is not None:  # the endpoint left and came back: a new member, a new connection
            self._retire(held[1])
        if member.redial is None:
            raise ConfigError(f"endpoint {member.key} of remote plugin {self.pool.name!r} cannot be dialed on"
                              " grpc.aio; use the sync RemoteClient for it")
        channel = member.redial.aio_channel()
        self._channels[member.key] = (member, channel)
        return channel

    def existing(self, member: Member) -> grpc.aio.Channel | None:
        """``member``'s channel, if it has one now (never dials)."""
        held = self._channels.get(member.key)
        return held[1] if held is not None and held[0] is member else None

    def _prune(self) -> None:
        self._generation = self.pool.generation
        for key, (member, channel) in list(self._channels.items()):
            if self.pool.member(key) is not member:
                del self._channels[key]
                self._retire(channel)

    def _retire(self, channel: grpc.aio.Channel) -> None:
        # its calls in flight end first (a leaving endpoint drains), as the sync pool's channels do
        closing = asyncio.ensure_future(channel.close(grace=self.pool.drain_timeout))
        self._retiring.add(closing)
        closing.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        """Close every connection now (calls in flight are cancelled). Idempotent."""
        self.closed = True
        channels = [channel for _, channel in self._channels.values()]
        self._channels.clear()
        await asyncio.gather(*(channel.close() for channel in channels), *self._retiring,
                             return_exceptions=True)


class AioPoolChannel(grpc.aio.Channel):  # type: ignore[misc]
    """The pool as a grpc.aio.Channel (``pin``: bound to one endpoint, as a brokered stub is).

    Only the owning channel's close() closes the connections; pinned views share them."""

    def __init__(self, endpoints: AioEndpoints, pin: str | None = None, owner: bool = True) -> None:
        self.endpoints = endpoints
        self.pool = endpoints.pool
        self.pin = pin
        self._owner = owner

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: bool | None = False) -> Any:
        return AioPoolCallable(self, "unary_unary", method, request_serializer, response_deserializer)

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return AioPoolCallable(self, "unary_stream", method, request_serializer, response_deserializer)

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return AioPoolCallable(self, "stream_unary", method, request_serializer, response_deserializer)

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: bool | None = False) -> Any:
        return AioPoolCallable(self, "stream_stream", method, request_serializer, response_deserializer)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """READY while a call could go somewhere (an endpoint is available), else TRANSIENT_FAILURE."""
        if self.endpoints.closed or self.pool.closed:
            return grpc.ChannelConnectivity.SHUTDOWN
        keys = self.pool.pickable_keys()
        available = self.pin in keys if self.pin is not None else bool(keys)
        return grpc.ChannelConnectivity.READY if available else grpc.ChannelConnectivity.TRANSIENT_FAILURE

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        while self.get_state() == last_observed_state:
            await asyncio.sleep(_WAIT * 2)

    async def channel_ready(self) -> None:
        while (state := self.get_state()) != grpc.ChannelConnectivity.READY:
            if state == grpc.ChannelConnectivity.SHUTDOWN:
                raise grpc.aio.UsageError("the client's channels are closed")
            await asyncio.sleep(_WAIT * 2)

    async def close(self, grace: float | None = None) -> None:
        if self._owner:
            await self.endpoints.close()

    async def __aenter__(self) -> AioPoolChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AioPoolCallable:
    """One method of the pool on grpc.aio; the deadline and failover rules are poolcalls.PoolCallable's."""

    def __init__(self, channel: AioPoolChannel, kind: str, method: str, ser: Any, de: Any) -> None:
        self.channel = channel
        self.kind = kind
        self._method = method
        self._ser = ser
        self._de = de
        self.rules = PoolCallable(channel.pool, kind, method, ser, de, pin=channel.pin)

    def __call__(self, request: Any = None, timeout: float | None = None, **kwargs: Any) -> Any:
        if self.channel.endpoints.closed:
            raise grpc.aio.UsageError("the client's channels are closed")
        if self.kind == "unary_unary":
            return UnaryCall(self, request, timeout, kwargs)
        return StreamCall(self, request, timeout, kwargs)

    def start(self, member: Member, request: Any, timeout: float | None, kwargs: dict[str, Any]) -> Any:
        """The call itself, on ``member``'s grpc.aio channel."""
        factory = getattr(self.channel.endpoints.channel(member), self.kind)
        target = factory(self._method, request_serializer=self._ser, response_deserializer=self._de,
                         _registered_method=True)
        return target(request, timeout=timeout, **kwargs)

    async def pick(self, pick_until: float, tried: set[str]) -> Member:
        """An endpoint, waited for within ``pick_until`` without blocking the loop (the pool's errors)."""
        pool = self.channel.pool
        while True:
            member: Member | None = pool.try_pick(pick_until, tried, self.channel.pin)
            if member is not None:
                return member
            await asyncio.sleep(min(_WAIT, max(pick_until - time.monotonic(), 0.0)))


class UnaryCall:
    """A unary call through the pool: it runs from the moment it is made (as a task), may go to a second
    endpoint when the first provably never got it, and is awaited for its response. Its metadata, code
    and details are those of its last try."""

    def __init__(self, callable: AioPoolCallable, request: Any, timeout: float | None,
                 kwargs: dict[str, Any]) -> None:
        self._callable = callable
        self._call: Any = None  # the try under way, or the last one
        self._task = asyncio.ensure_future(self._run(request, timeout, kwargs))
        self._task.add_done_callback(_retrieved)  # a call nobody awaits fails quietly, as grpc.aio's does

    async def _run(self, request: Any, timeout: float | None, kwargs: dict[str, Any]) -> Any:
        rules, pool = self._callable.rules, self._callable.channel.pool
        pick_until, deadline = rules.deadline(timeout)
        tried: set[str] = set()
        last = ""
        pause = 0.05
        while True:
            try:
                member = await self._callable.pick(pick_until, tried)
            except NoEndpointsError as exc:
                if not tried or pool.closed:
                    raise
                raise no_endpoints(pool, str(exc.details()) if isinstance(exc, NoEndpoints) else str(exc),
                                   last=last) from None
            try:
                self._call = self._callable.start(member, request, rules.remaining(deadline), kwargs)
                result = await self._call
            except grpc.RpcError as exc:
                pool.done(member, exc)
                if not not_sent(exc, self._callable.channel.endpoints.existing(member)):
                    raise
                # the verdict may wait for a TLS probe (up to 1 s): not on the loop
                last, wait = await asyncio.get_running_loop().run_in_executor(
                    None, rules.refused, member, exc, tried, pick_until, pause)
                if wait:
                    await asyncio.sleep(wait)
                    pause = min(pause * 2, 0.5)
                continue
            except grpc.aio.UsageError:  # the client was killed under the call
                pool.done(member, None)
                raise no_endpoints(pool, "the client was killed or closed", closed=True) from None
            except BaseException as exc:
                pool.done(member, exc)
                raise
            pool.done(member, None)
            return result

    def __await__(self) -> Generator[Any, None, Any]:
        return self._task.__await__()

    def cancel(self) -> bool:
        return self._task.cancel()

    def cancelled(self) -> bool:
        return self._task.cancelled()

    def done(self) -> bool:
        return self._task.done()

    async def _ended(self) -> BaseException | None:
        try:
            await asyncio.shield(self._task)
        except BaseException as exc:  # noqa: BLE001 (how it ended is what the caller asks)
            return exc
        return None

    async def code(self) -> grpc.StatusCode:
        error = await self._ended()
        if self._call is not None and not isinstance(error, NoEndpointsError):
            return await self._call.code()
        if isinstance(error, grpc.RpcError):
            code: grpc.StatusCode = error.code()
            return code
        return grpc.StatusCode.CANCELLED if isinstance(error, asyncio.CancelledError) else grpc.StatusCode.OK

    async def details(self) -> str:
        error = await self._ended()
        if self._call is not None and not isinstance(error, NoEndpointsError):
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
        self._ready: asyncio.Future[None] | None = None
        pick_until, deadline = callable.rules.deadline(timeout)
        member: Member | None = None
        failed: BaseException | None = None
        try:
            member = callable.channel.pool.try_pick(pick_until, set(), callable.channel.pin)
        except grpc.RpcError as exc:  # no endpoint, TLS refused: raised when awaited, as grpc.aio does
            failed = exc
        if member is not None:
            self._begin(member, request, deadline, kwargs)
        else:
            self._ready = asyncio.ensure_future(self._later(failed, pick_until, request, deadline, kwargs))
            self._ready.add_done_callback(_retrieved)

    async def _later(self, failed: BaseException | None, pick_until: float, request: Any, deadline: float | None,
                     kwargs: dict[str, Any]) -> None:
        if failed is not None:
            raise failed
        self._begin(await self._callable.pick(pick_until, set()), request, deadline, kwargs)

    def _begin(self, member: Member, request: Any, deadline: float | None, kwargs: dict[str, Any]) -> None:
        pool = self._callable.channel.pool
        try:
            self._call = self._callable.start(member, request, self._callable.rules.remaining(deadline), kwargs)
        except BaseException as exc:
            pool.done(member, exc)
            raise
        self._call.add_done_callback(lambda call: _report(pool, member, call))

    async def _started(self) -> Any:
        if self._ready is not None:
            await self._ready
        return self._call

    def __await__(self) -> Generator[Any, None, Any]:
        return self._response().__await__()

    async def _response(self) -> Any:
        return await (await self._started())

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        async for item in await self._started():
            yield item

    async def read(self) -> Any:
        return await (await self._started()).read()

    async def write(self, request: Any) -> None:
        await (await self._started()).write(request)

    async def done_writing(self) -> None:
        await (await self._started()).done_writing()

    def cancel(self) -> bool:
        if self._call is not None:
            return bool(self._call.cancel())
        return self._ready is not None and self._ready.cancel()

    def cancelled(self) -> bool:
        if self._call is not None:
            return bool(self._call.cancelled())
        return self._ready is not None and self._ready.cancelled()

    def done(self) -> bool:
        if self._call is not None:
            return bool(self._call.done())
        return self._ready is None or self._ready.done()

    async def _failed(self) -> BaseException | None:
        try:
            await self._started()
        except BaseException as exc:  # noqa: BLE001 (the wait for an endpoint is how it ended)
            return exc
        return None

    async def code(self) -> grpc.StatusCode:
        error = await self._failed()
        if error is None:
            return await self._call.code()
        return error.code() if isinstance(error, grpc.RpcError) else grpc.StatusCode.CANCELLED

    async def details(self) -> str:
        error = await self._failed()
        if error is None:
            return str(await self._call.details())
        return str(error.details()) if isinstance(error, grpc.RpcError) else ""

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
        error = None if code == grpc.StatusCode.OK else grpc.aio.AioRpcError(
            code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)
        pool.done(member, error)

    asyncio.ensure_future(report()).add_done_callback(_retrieved)


def _retrieved(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
