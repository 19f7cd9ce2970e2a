"""The grpc.aio channel under an AsyncSupervisor's stubs (plugbay.core.resilience.aiosupervisor): each
call goes to the current Client's own grpc.aio connection, dialed when a call first needs it and closed
once a restart replaced that Client; while the plugin restarts, a call is refused unsent (the ready gate
waits for the successor)."""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import grpc.aio

from plugbay.core.host.aiochannel import AioManagedChannel, RefusedCall
from plugbay.core.host.callerrors import ClientClosed
from plugbay.core.host.channel import ManagedChannel
from plugbay.core.host.client import Client
from plugbay.core.resilience.readygate import was_stopped
from plugbay.core.resilience.supervisor import Supervisor


class FollowingChannel(grpc.aio.Channel):  # type: ignore[misc]
    """A grpc.aio channel whose calls go to the Supervisor's current Client (used on the loop only)."""

    def __init__(self, sup: Supervisor, loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor) -> None:
        self._sup = sup
        self._loop = loop
        self._executor = executor
        self._held: tuple[Client, AioManagedChannel] | None = None
        self._closing: set[asyncio.Future[None]] = set()
        self._closed = False

    def current(self) -> AioManagedChannel | None:
        """The current Client's grpc.aio channel (dialed now if new); None while it restarts."""
        client = self._sup.current_client
        if client is None or self._closed:
            return None
        held = self._held
        if held is not None and held[0] is client:
            return held[1]
        self.follow()
        managed = client.channel
        assert isinstance(managed, ManagedChannel)
        channel = AioManagedChannel(client.aio_channel(), managed, self._loop, self._executor, "AsyncSupervisor")
        self._held = (client, channel)
        return channel

    def follow(self) -> None:
        """Close the connection of a Client the Supervisor replaced (its calls end, typed)."""
        held = self._held
        if held is not None and held[0] is not self._sup.current_client:
            self._held = None
            closing = asyncio.ensure_future(held[1].aclose())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def close(self, grace: float | None = None) -> None:
        self._closed = True
        self._sup.wake_waiters()  # a channel_ready() waiting for a plugin says the channel closed, now
        held, self._held = self._held, None
        if held is not None:
            await held[1].aclose()
        await asyncio.gather(*self._closing, return_exceptions=True)

    def _callable(self, kind: str, method: str, ser: Any, de: Any) -> Any:
        def call(request: Any = None, timeout: float | None = None, **kwargs: Any) -> Any:
            channel = self.current()
            if channel is None:  # restarting: nothing was sent; the ready gate waits for the successor
                return RefusedCall(self._restarting)
            return getattr(channel, kind)(method, ser, de)(request, timeout=timeout, **kwargs)
        return call

    async def _restarting(self) -> BaseException:
        return ClientClosed(f"the plugin of {self._sup.kind} {self._sup.name!r} is being restarted", None,
                            grpc.StatusCode.UNAVAILABLE, sent=False)

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: bool | None = False) -> Any:
        return self._callable("unary_unary", method, request_serializer, response_deserializer)

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return self._callable("unary_stream", method, request_serializer, response_deserializer)

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return self._callable("stream_unary", method, request_serializer, response_deserializer)

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: bool | None = False) -> Any:
        return self._callable("stream_stream", method, request_serializer, response_deserializer)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        channel = self.current()
        if channel is None:
            ended = self._closed or self._sup.state in ("failed", "stopped")
            return grpc.ChannelConnectivity.SHUTDOWN if ended else grpc.ChannelConnectivity.CONNECTING
        return channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        shutdown = grpc.ChannelConnectivity.SHUTDOWN
        while self.get_state() == last_observed_state != shutdown:
            client, channel = self._sup.current_client, self.current()
            if channel is None:  # restarting: woken when a plugin runs again, or none will
                await self._sup.until_async(lambda: self.get_state() != last_observed_state, math.inf)
                continue
            # the current connection's own change, or the Supervisor's move to another Client
            own = asyncio.ensure_future(channel.wait_for_state_change(last_observed_state))
            moved = asyncio.ensure_future(self._sup.until_async(
                lambda: self._sup.current_client is not client or self._sup.state != "running", math.inf))
            try:
                await asyncio.wait([own, moved], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in (own, moved):
                    waiter.cancel()
                await asyncio.gather(own, moved, return_exceptions=True)

    async def channel_ready(self) -> None:
        def found() -> bool:
            if self.current() is not None:
                return True
            self._sup.raise_if_failed()  # the restart budget is spent: no plugin will come
            if self._closed or self._sup.state == "stopped":
                raise was_stopped(self._sup.name, self._sup.kind)
            return False

        while True:
            await self._sup.until_async(found, math.inf)
            channel = self.current()
            if channel is not None:  # else replaced meanwhile: wait for the next one
                await channel.channel_ready()
                return

    async def __aenter__(self) -> FollowingChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

