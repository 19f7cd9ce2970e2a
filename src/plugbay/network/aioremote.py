"""AsyncRemoteClient: the RemoteClient for asyncio code, its calls on grpc.aio on the caller's event loop.

    async with AsyncRemoteClient(RemoteConfig(target="dns:///kv.plugins.internal:7001", ...)) as client:
        kv = await client.dispense("kv_grpc")      # the plugin definition's grpc_client_async() stub
        await kv.put("k", b"v")

Everything but the calls' I/O is the sync RemoteClient's, as AsyncClient's is
the sync Client's: discovery, Describe and the version negotiation run on the
client's own threads (start), and the endpoint pool keeps its health checks,
ejection and picks. Calls go through plugbay.network.aiopool: each endpoint's
own grpc.aio connection, failover of unary calls that never left, the same
deadlines and typed errors. ``kill()`` and ``close()`` only disconnect. With
brokered connections (the plugin multiplexes them), each ``dispense()`` pins
its stub to one endpoint (round robin) and that endpoint's broker, and an
asyncio servicer the stub serves there runs on this event loop.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, NoReturn, overload

import grpc.aio

from plugbay.core.broker.broker import GRPCBroker
from plugbay.core.host.aiochannel import AioManagedChannel
from plugbay.core.host.aioclient import AsyncClient, owner_cancelled
from plugbay.core.host.channel import ManagedChannel
from plugbay.core.host.typedstub import StubT, check_stub_type, checked_stub
from plugbay.errors import ClientStateError
from plugbay.network.aiopool import AioEndpoints, AioPoolChannel
from plugbay.network.poolmetrics import PoolMetrics
from plugbay.network.remote import MainHook, RemoteClient, RemoteConfig


class _PinnedAioChannel(MainHook, AioManagedChannel):
    """A brokered stub's channel on the AsyncRemoteClient. Its failures are judged by a sync pinned channel
    (``judge``: the RemoteClient's pinned_channel()), so that its calls are told what a sync pinned stub's are:
    the owner's words (a Supervisor restarting or stopping the client: dispense again, or stopped), not the
    main channel's (a restart's "later calls go to the restarted plugin", which a pinned stub never reaches)."""

    def __init__(self, main: Any, inner: grpc.aio.Channel, judge: ManagedChannel, managed: ManagedChannel,
                 *args: Any) -> None:
        super().__init__(main, inner, judge, *args)
        judge.on_close_current.remove(self.close_soon)
        # closed when the main connection closes; a weak hook there (a bound close_soon kept every pinned
        # channel ever dispensed alive until close) lets a dropped stub's channel go
        hooks = managed.on_close_current
        hook = _CloseSoon(self)
        hooks.append(hook)
        weakref.finalize(self, _forget, hooks, hook)


class _CloseSoon:
    """close_soon() of a pinned channel while it lives."""

    def __init__(self, channel: _PinnedAioChannel) -> None:
        self._channel = weakref.ref(channel)

    def __call__(self) -> None:
        channel = self._channel()
        if channel is not None:
            channel.close_soon()


def _forget(hooks: list[Any], hook: _CloseSoon) -> None:
    try:
        hooks.remove(hook)
    except ValueError:
        pass


def _pin(client: RemoteClient, name: str) -> tuple[Any, str, GRPCBroker, ManagedChannel]:
    plugin, key, broker = client.pin(name)
    return plugin, key, broker, client.pinned_channel(key)


class AsyncRemoteClient(AsyncClient):
    """A plugin served on the network, for asyncio code. See the module docstring."""

    def __init__(self, config: RemoteConfig) -> None:  # noqa: D107 (a RemoteConfig, not a ClientConfig)
        self._endpoints: AioEndpoints | None = None
        self._setup(RemoteClient(config))  # a bad target or option fails here, before anything runs

    @property
    def remote_client(self) -> RemoteClient:
        """The sync RemoteClient underneath (its pool, discovery and Describe answer are this client's)."""
        client = self.sync_client
        assert isinstance(client, RemoteClient)
        return client

    @property
    def remote(self) -> RemoteConfig:
        return self.remote_client.remote

    @property
    def multiplexed(self) -> bool:
        """True once the endpoints are reached through yamux sessions (brokered connections), as
        RemoteClient.multiplexed."""
        return self.remote_client.multiplexed

    def metrics(self) -> PoolMetrics:
        """The endpoint pool's metrics snapshot (as RemoteClient.metrics())."""
        return self.remote_client.metrics()

    def _aio_channel(self) -> grpc.aio.Channel:
        self._endpoints = AioEndpoints(self.remote_client.pool)
        return AioPoolChannel(self._endpoints)

    @overload
    async def dispense(self, name: str, stub_type: None = None) -> Any: ...
    @overload
    async def dispense(self, name: str, stub_type: type[StubT]) -> StubT: ...

    async def dispense(self, name: str, stub_type: type[Any] | None = None) -> Any:
        """The plugin's async stub; with brokered connections, a new one per call, pinned to one endpoint.
        Given ``stub_type``, typed as one, as AsyncClient.dispense()."""
        check_stub_type(stub_type, name, type(self).__name__, "grpc_client_async")
        await self.start()
        client = self.remote_client
        if not client.multiplexed:
            return await super().dispense(name, stub_type)
        # the endpoint's broker may wait for its session to come up, the judge for the client's lock: not on the loop
        plugin, key, broker, judge = await self._work_on(_pin, client, name)
        if self._endpoints is None or self._endpoints.closed:
            raise self._killed_refusal()
        managed = client.channel
        assert isinstance(managed, ManagedChannel)
        pinned = _PinnedAioChannel(self.channel, AioPoolChannel(self._endpoints, pin=key, owner=False), judge,
                                   managed, asyncio.get_running_loop(), self._executor, type(self).__name__)
        self._more_channels.add(pinned)
        return checked_stub(plugin.grpc_client_async(broker, pinned), stub_type, name, type(self).__name__,
                            "grpc_client_async")

    def _owner_cancelled_error(self) -> ClientStateError:  # it launches nothing: its connections are what ends
        return owner_cancelled(f"the client of plugin {self.name!r}", type(self).__name__,
                               "closes the connections it made to the plugin's endpoints")

    def reattach_config(self) -> NoReturn:
        self.remote_client.reattach_config()  # refused, saying what to do instead
