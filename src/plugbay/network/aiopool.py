"""The endpoint pool on grpc.aio: an AsyncRemoteClient's calls, on the caller's event loop.

Only the calls' I/O is here. Discovery, health checks, ejection and the
bookkeeping of picks stay the sync EndpointPool's (plugbay.network.pool, on its
threads), and what a failure means is decided by the code the sync calls use
(plugbay.network.poolcalls), so a call picks, fails over and fails the same way
on either side. Each endpoint gets a grpc.aio channel of its own, dialed like
its sync channel (``Member.redial``), when a call first picks it; once
discovery drops the endpoint, that channel closes when its calls end (at most
the pool's ``drain_timeout`` later, or at once when the client is closed); once
the pool dials the endpoint again with renewed TLS files (a new Member, whose
``redial`` carries them), the next call gets a channel with them and the old one
closes when its calls end, however long they last while the endpoint stays. A
unary call that never left an endpoint goes to another within its deadline; a
stream goes to the endpoint picked when it is made (waiting for one, within its
deadline, without blocking the loop).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self

import grpc
import grpc.aio

from plugbay.core.host.aiochannel import refused_now
from plugbay.core.host.callerrors import CallTimeout
from plugbay.core.host.deadline import call_timeout
from plugbay.errors import ConfigError
from plugbay.network.aiopoolcalls import WAIT, UnaryCall
from plugbay.network.aiopoolstream import StreamCall
from plugbay.network.channelbase import Member
from plugbay.network.pool import EndpointPool
from plugbay.network.poolcalls import PoolCallable
from plugbay.network.unsent import Tried

_PRUNE_EVERY = 0.5  # how often the connections follow discovery's changes when no call comes


def _closed(channel: grpc.aio.Channel) -> bool:
    """Whether ``channel`` is closing or closed. grpc.aio registers a method on its C channel as a
    registered multicallable is built, without looking whether that channel was destroyed: on a closed one
    that is a use-after-free, which aborted a host process once (grpcio 1.85)."""
    closed = getattr(getattr(channel, "_channel", None), "closed", None)
    return closed is not None and bool(closed())


class AioEndpoints:
    """The grpc.aio channel of each endpoint calls went to (used on the event loop's thread only)."""

    def __init__(self, pool: EndpointPool) -> None:
        self.pool = pool
        self._channels: dict[str, tuple[Member, grpc.aio.Channel]] = {}
        self._retiring: set[asyncio.Future[None]] = set()
        self._renewed: dict[asyncio.Future[None], grpc.aio.Channel] = {}  # closing, replaced for renewed files
        self._calls: dict[Any, grpc.aio.Channel] = {}  # grpc.aio calls in flight, and their channel (see close())
        self._inflight: dict[grpc.aio.Channel, int] = {}  # how many of them each channel has (_close_renewed)
        # closing because their endpoint left (or was dialed anew): the calls their close cuts are typed (cut())
        self._left: weakref.WeakKeyDictionary[grpc.aio.Channel, str] = weakref.WeakKeyDictionary()
        self._generation = -1
        self._watch: asyncio.Future[None] | None = None  # prunes after discovery's changes (see _watch_pool)
        # judges refused calls (that may wait for a TLS probe) off the loop, on threads of its own (made
        # when first needed): on the loop's default executor the user's own work held calls past their deadline
        self.executor = ThreadPoolExecutor(4, thread_name_prefix=f"plugbay-aio-pool-{pool.name}")
        self.closed = False

    def channel(self, member: Member) -> grpc.aio.Channel:
        if self.closed:
            raise grpc.aio.UsageError("the client's channels are closed")
        if self._generation != self.pool.generation:
            self._prune()
        held = self._channels.get(member.key)
        if held is not None and held[0] is member:
            return held[1]
        if held is not None:  # the endpoint left and came back, or renewed files: a new member, a new connection
            self._retire(held)
        if member.redial is None:
            raise ConfigError(f"endpoint {member.key} of remote plugin {self.pool.name!r} cannot be dialed on"
                              " grpc.aio; use the sync RemoteClient for it")
        channel = member.redial.aio_channel()
        if self.pool.member(member.key) is not member:  # it left since it was picked: this call only
            self._retire((member, channel))
            return channel
        self._channels[member.key] = (member, channel)
        if self._watch is None:
            self._watch = asyncio.ensure_future(self._watch_pool())
        return channel

    async def _watch_pool(self) -> None:
        """Close the connections of endpoints that left, whether or not calls still come."""
        while not self.closed:
            await asyncio.sleep(_PRUNE_EVERY)
            if self._generation != self.pool.generation and not self.closed:
                self._prune()

    def started(self, call: Any, channel: grpc.aio.Channel) -> None:
        """Note a grpc.aio call made on ``channel``, one of these channels, until it is done."""
        self._calls[call] = channel
        self._inflight[channel] = self._inflight.get(channel, 0) + 1
        try:
            call.add_done_callback(self._ended)  # on a cancel too; at once if it is done already
        except BaseException:
            self._ended(call)
            raise

    def _ended(self, call: Any) -> None:
        channel = self._calls.pop(call, None)
        if channel is None:  # counted off already
            return
        if self._inflight[channel] > 1:
            self._inflight[channel] -= 1
        else:
            del self._inflight[channel]  # a channel without calls keeps no entry

    def existing(self, member: Member) -> grpc.aio.Channel | None:
        """``member``'s channel, if it has one now (never dials)."""
        held = self._channels.get(member.key)
        return held[1] if held is not None and held[0] is member else None

    def cut(self, channel: grpc.aio.Channel) -> str | None:
        """The endpoint whose leaving closed ``channel`` under its calls; None when it was not retired,
        or when the client's close cut them (that close's own error is theirs)."""
        return None if self.closed else self._left.get(channel)

    def _prune(self) -> None:
        self._generation = self.pool.generation
        for key, (member, channel) in list(self._channels.items()):
            if self.pool.member(key) is not member:
                del self._channels[key]
                self._retire((member, channel))

    def _retire(self, held: tuple[Member, grpc.aio.Channel]) -> None:
        # its calls in flight end first (a leaving endpoint drains), as the sync pool's channels do
        member, channel = held
        self._left[channel] = member.key
        renewed = member.renewed and self.pool.member(member.key) is not None
        closing = asyncio.ensure_future(self._close_renewed(member.key, channel) if renewed
                                        else channel.close(grace=self.pool.drain_timeout))
        self._retiring.add(closing)
        closing.add_done_callback(self._retiring.discard)
        if renewed:
            self._renewed[closing] = channel
            closing.add_done_callback(lambda done: self._renewed.pop(done, None))

    async def _close_renewed(self, key: str, channel: grpc.aio.Channel) -> None:
        """A channel replaced for renewed TLS files: closed once the calls made on it end (a renewal cuts
        none), or drain_timeout after its endpoint left, as the sync pool's."""
        # (grpc.aio's close() waits for calls within one grace, and a second close() does not shorten it)
        while self.pool.member(key) is not None and channel in self._inflight:
            await asyncio.sleep(_PRUNE_EVERY)
        await channel.close(grace=self.pool.drain_timeout)

    async def close(self) -> None:
        """Close every connection now (calls in flight are cancelled). Idempotent."""
        self.closed = True
        self.executor.shutdown(wait=False)
        if self._watch is not None:
            self._watch.cancel()
        channels = [channel for _, channel in self._channels.values()]
        self._channels.clear()
        for closing, channel in list(self._renewed.items()):  # not waited for: closed below with the rest
            closing.cancel()
            channels.append(channel)
        # a draining connection's close waits (up to drain_timeout) for its calls: cancelled, they end
        # now, as the sync client's do (grpc.aio's close() of a channel already closing does nothing)
        for call in list(self._calls):
            call.cancel()
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
            await asyncio.sleep(WAIT * 2)

    async def channel_ready(self) -> None:
        while (state := self.get_state()) != grpc.ChannelConnectivity.READY:
            if state == grpc.ChannelConnectivity.SHUTDOWN:
                raise grpc.aio.UsageError("the client's channels are closed")
            await asyncio.sleep(WAIT * 2)

    async def close(self, grace: float | None = None) -> None:
        if self._owner:
            await self.endpoints.close()

    async def __aenter__(self) -> Self:
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
        try:
            timeout = call_timeout(timeout)  # when called, not when awaited, as AioManagedChannel's calls
        except CallTimeout as exc:  # timeout=0: not sent; raised when awaited, as AioManagedChannel's
            return refused_now(exc)
        if self.kind == "unary_unary":
            return UnaryCall(self, request, timeout, kwargs)
        return StreamCall(self, request, timeout, kwargs)

    def start(self, member: Member, request: Any, timeout: float | None,
              kwargs: dict[str, Any]) -> tuple[Any, grpc.aio.Channel]:
        """The call itself, on ``member``'s grpc.aio channel (and that channel)."""
        channel = self.channel.endpoints.channel(member)
        if _closed(channel):  # refused as grpc.aio's own call() refuses it, before grpcio's C side sees it
            raise grpc.aio.UsageError("Channel is closed.")
        target = getattr(channel, self.kind)(self._method, request_serializer=self._ser,
                                             response_deserializer=self._de, _registered_method=True)
        call = target(request, timeout=timeout, **kwargs)
        self.channel.endpoints.started(call, channel)
        return call, channel

    async def pick(self, pick_until: float, tried: Tried) -> Member:
        """An endpoint, waited for within ``pick_until`` without blocking the loop (the pool's errors)."""
        pool = self.channel.pool
        while True:
            member: Member | None = pool.try_pick(pick_until, tried, self.channel.pin)
            if member is not None:
                return member
            await asyncio.sleep(min(WAIT, max(pick_until - time.monotonic(), 0.0)))
