"""RemoteClient: the plugbay Client of a plugin served on the network, found by a target.

    cfg = RemoteConfig(target="dns:///kv.plugins.internal:7001", handshake=HANDSHAKE,
                       plugins={"kv_grpc": KVPlugin()},
                       tls=NetworkTLS("host.crt", "host.key", "ca.crt", server_name="kv"))
    with RemoteClient(cfg) as client:
        kv = client.dispense("kv_grpc")

The stdout handshake is replaced by the plugin's Discovery service
(plugbay.network.v1.Discovery/Describe): it names the core protocol, "grpc",
the app protocol versions offered (each with its plugins) and whether brokered
connections are multiplexed. The host negotiates the highest common version
(VersionMismatchError with both lists when there is none). A plugin that does
not serve Discovery (an unmodified go-plugin plugin on the network) is taken
to offer the handshake's protocol_version, with a warning.

Calls go through an EndpointPool (plugbay.network.pool) under the Client's
usual ManagedChannel. ``kill()`` and ``close()`` only disconnect: the remote
plugin is shared and outlives this host.

Brokered connections (callbacks): when Discovery says ``multiplex`` (or
``RemoteConfig(multiplex=True)`` insists; ``brokered=False`` declines them),
each endpoint is reached over ONE
TLS connection carrying a yamux session (plugbay.network.muxconn): the main
channel and every brokered connection are its streams, and the plugin gives
the session its own plugin instance and broker. ``dispense()`` then pins each
stub to one endpoint (round robin), with that endpoint's broker. Otherwise
using the broker raises BrokerError. A plugin that refuses the sessions (a cap
on sessions reached) says why at once (SessionRefusedError); the client then
serves plain gRPC calls, with a warning, unless ``multiplex=True`` insists.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any, Callable, NoReturn, Unpack, overload

import grpc

from plugbay._proto.plugbay import discovery_pb2
from plugbay.core.broker.broker import GRPCBroker
from plugbay.core.broker.plugin import GRPCPlugin
from plugbay.core.host.callerrors import BrokerClientClosed
from plugbay.core.host.channel import ManagedChannel
from plugbay.core.host.client import Client
from plugbay.core.host.typedstub import StubT, check_stub_type, checked_stub
from plugbay.core.protocol.handshake import HandshakeConfig, HandshakeInfo
from plugbay.core.transport.keepalive import Keepalive
from plugbay.errors import (
    ClientStateError,
    ConfigError,
    DiscoveryError,
    HandshakeTimeoutError,
    NoEndpointsError,
    SessionRefusedError,
)
from plugbay.network.describe import Asker, describe, handshake_info, warn_unlisted
from plugbay.network.muxconn import MuxEndpoint, RefusalWatch, Sessions
from plugbay.network.muxpin import pin_stub
from plugbay.network.pinhook import MainHook as MainHook, PinnedChannel  # MainHook: aioremote's too
from plugbay.network.nobroker import NO_BROKER, NO_BROKER_ASKED, POOL_BROKER, NetworkBroker
from plugbay.network.pool import EndpointPool
from plugbay.network.poolmetrics import PoolMetrics
from plugbay.network.resolver import Endpoint
from plugbay.network.remote_end import closed_remote, closed_while_connecting, remote_call_closed
from plugbay.network.remotecheck import check_remote, wants_broker
from plugbay.network.poolhealth import reconnect_backoff
from plugbay.network.remoteconfig import RemoteFields
from plugbay.network.remoteoptions import RemoteOptions, check_options
from plugbay.network.targets import dns_server_for, make_resolver, parse_target

_log = logging.getLogger("plugbay.network")


class RemoteConfig(RemoteFields):
    """How to reach a plugin served on the network (its fields: plugbay.network.remoteconfig). See the module
    docstring."""

    def make_client(self) -> RemoteClient:
        """A new RemoteClient (what a Supervisor calls on each (re)connect)."""
        return RemoteClient(self)


class RemoteClient(Client):
    """A Client whose plugin is a remote service: discovery instead of launch, disconnect instead of kill."""

    def __init__(self, config: RemoteConfig) -> None:
        if not isinstance(config, RemoteConfig):
            raise ConfigError(f"RemoteClient takes a RemoteConfig, got {type(config).__name__}; pass"
                              " RemoteClient(RemoteConfig(target=..., handshake=...)) or use connect(target, ...)")
        self.remote = config
        self.target = parse_target(config.target)  # a bad target fails here, before anything runs
        check_remote(config)
        dns_server_for(self.target, config.dns_server)
        super().__init__(config.client_config())
        self.multiplexed = False  # True once the endpoints are reached through yamux sessions
        self._pool: EndpointPool | None = None
        self.description: discovery_pb2.DescribeResponse | None = None
        # weak: a stub the caller dropped lets go of its channel; the live ones are detached at close
        self._pinned: weakref.WeakSet[ManagedChannel] = weakref.WeakSet()
        self._muxes = Sessions()  # the endpoints' sessions, as made
        self._answered = False  # an endpoint had answered health checks when a kill() cut the start short
        self._owner_stop: Callable[[grpc.RpcError | None], BaseException] | None = None  # see stopping_owner
        self._unlisted_warned: set[str] = set()  # names the remote's Discovery does not list, warned of once

    @property
    def pool(self) -> EndpointPool:
        pool: EndpointPool = self._need(self._pool, "pool")
        return pool

    def metrics(self) -> PoolMetrics:
        """The endpoint pool's metrics snapshot (endpoints known/healthy/ejected, picks, ejections; the keys:
        plugbay.network.PoolMetrics)."""
        return self._need(self._pool, "metrics()").metrics()

    @property
    def connection_mode(self) -> str:
        return "plaintext" if self.remote.insecure else "network-tls"

    def _start(self) -> None:
        cfg = self.remote
        deadline = time.monotonic() + cfg.start_timeout
        refused: SessionRefusedError | None = None  # the plugin refused this host's sessions
        answer = self._describe(self._make_pool(None, deadline), deadline)
        self._accept(self._handshake_info(answer))
        if wants_broker(self.remote, answer, self.name, self.target.text):
            refused = self._multiplex(deadline)
        self._info = self._announced
        self._channel = ManagedChannel(self._pool, self.config.call_timeout, None, self.name)
        self._channel.killed_error = self._call_closed
        self._broker = NetworkBroker(POOL_BROKER if self.multiplexed else str(refused) if refused is not None
                                     else NO_BROKER_ASKED if not cfg.brokered else NO_BROKER)

    def _multiplex(self, deadline: float) -> SessionRefusedError | None:
        """Reach the endpoints through yamux sessions; when the plugin refuses them (its cap on sessions),
        plain gRPC instead (returning why), unless ``multiplex=True`` insists (SessionRefusedError)."""
        warned = self.pool.tls_warnings()
        self.pool.close()  # Discovery ran over plain gRPC; now one session per endpoint carries everything
        self._muxes = Sessions()
        pool = self._make_pool(self._connect_mux, deadline, warned)
        try:
            with RefusalWatch(self._muxes, pool.close):  # the wait for an endpoint ends at a refusal
                # through the gateway the sessions reach a launched child, which has no Discovery (the
                # gateway answered it above): UNIMPLEMENTED there is expected, not worth a warning
                self._describe(pool, deadline, answered=True)
            self.multiplexed = True
            return None
        except SessionRefusedError as exc:
            pool.close()
            if self.remote.multiplex:  # insisted on: no plain gRPC in its place
                raise
            _log.warning("%s; this client serves plain gRPC calls only (a brokered connection fails with"
                         " BrokerError): pass brokered=False where no callbacks are used, or multiplex=True"
                         " to fail instead", exc)
            self._make_pool(None, deadline)
            return exc

    def _make_pool(self, connector: Callable[[Endpoint], grpc.Channel] | None, deadline: float,
                   warned: frozenset[str] = frozenset()) -> EndpointPool:
        cfg = self.remote
        resolver = make_resolver(self.target, dns_server=cfg.dns_server, refresh=cfg.dns_refresh,
                                 name=self.name, kubernetes=cfg.kubernetes, allow_loopback=cfg.allow_loopback)
        pool = EndpointPool(resolver, tls=cfg.tls, insecure=cfg.insecure, policy=cfg.policy,
                            outlier=cfg.outlier, health_interval=cfg.health_interval,
                            health_timeout=cfg.health_timeout, options=cfg.grpc_options,
                            name=self.name, connector=connector, keepalive=cfg.grpc_keepalive)
        pool.tls_warned_before = warned  # the start's plain pool warned of these: not again
        self._pool = pool  # before it starts: a kill() from another thread closes it (see kill)
        try:
            self._stop_if_killed()
            pool.start(deadline)
        except DiscoveryError as exc:
            pool.close()
            self._stop_if_killed()  # the kill ended discovery: say so, not what the cut-short list said
            if time.monotonic() < deadline or isinstance(exc, NoEndpointsError):
                raise
            raise HandshakeTimeoutError(
                f"discovery of remote plugin {self.name!r} at {self.target.text!r} did not finish within"
                f" start_timeout ({self.remote.start_timeout:.1f}s): {exc}. Check that the discovery source"
                " (DNS server, Kubernetes API) answers quickly, or raise start_timeout") from exc
        except BaseException:
            pool.close()
            raise
        return pool

    def _stop_if_killed(self) -> None:
        if self._kill_asked:
            raise self.killed_starting_error()

    def killed_starting_error(self) -> ClientStateError:
        # nothing was stopped: the plugin is remote; after a finished start, an AsyncRemoteClient's own check
        found = self._started or self.description is not None or self._answered
        return closed_while_connecting(self.name, self.target.text, self.user_class, found=found,
                                       discovered=self._started)

    def killed_refusal(self) -> ClientStateError:
        return closed_remote(self.name, self.user_class)

    def _call_closed(self, original: grpc.RpcError | None) -> BaseException:
        return remote_call_closed(self.name, self.user_class, original)

    def stopping_owner(self, error: Callable[[grpc.RpcError | None], BaseException]) -> None:
        """Its owner (a Supervisor) is stopping, or restarting the plugin, and kills it: what its main channel's
        calls are told (endedcalls .mark_stopping, .mark_restarting), stubs pinned by dispense() are told too, not
        this client's own advice (make a new one)."""
        self._owner_stop = error

    def _pinned_closed(self, original: grpc.RpcError | None) -> BaseException:
        return (self._owner_stop or self._call_closed)(original)

    def kill(self) -> None:
        """Disconnect; from another thread during start(), that start() ends now (not at start_timeout)."""
        starting = self._starting
        if starting is not None and starting is not threading.current_thread():
            # start() holds the Client's lock while it waits for an endpoint; closing its pool wakes
            # that wait, so the kill does not have to wait out start_timeout for the lock
            self._kill_asked = True
            pool = self._pool
            if pool is not None:
                self._answered = self._answered or pool.metrics()["healthy"] > 0
                pool.close()
        super().kill()

    def _connect_mux(self, endpoint: Endpoint) -> grpc.Channel:
        tls = self.remote.tls
        assert tls is not None
        tls.ssl_context()  # a bad file fails here, not on the relay's loop
        # the relay asks per TLS connection it makes: renewed files apply to the next one
        return self._muxes.add(MuxEndpoint(endpoint, tls.ssl_context, tls.server_name, self.remote.grpc_options,
                                           keepalive=Keepalive.of(self.remote.mux_keepalive, "mux_keepalive"),
                                           reconnect=reconnect_backoff(self.remote.health_interval)))

    @overload
    def dispense(self, name: str, stub_type: None = None) -> Any: ...
    @overload
    def dispense(self, name: str, stub_type: type[StubT]) -> StubT: ...

    def dispense(self, name: str, stub_type: type[Any] | None = None) -> Any:
        """The plugin's stub; with brokered connections, pinned to one endpoint (round robin) and its broker.
        Given ``stub_type``, typed as one, as Client.dispense()."""
        check_stub_type(stub_type, name, type(self).__name__, "grpc_client")
        with self._lock:
            self.start()  # refuses a killed Client; a no-op once started
            if not self.multiplexed:
                return super().dispense(name, stub_type)
        plugin, key, broker = self.pin(name)  # without the lock: a close() meanwhile ends its wait
        stub = plugin.grpc_client(broker, self.pinned_channel(key))
        return checked_stub(stub, stub_type, name, type(self).__name__, "grpc_client")

    def plugin_for(self, name: str) -> GRPCPlugin:
        """As Client.plugin_for; also warns of a name the remote's Discovery does not list (warn_if_unlisted)."""
        plugin = super().plugin_for(name)
        self.warn_if_unlisted(name)
        return plugin

    def warn_if_unlisted(self, name: str) -> None:
        """Warn, once per name, when the remote's Discovery lists its plugins for the negotiated version and not
        ``name`` (describe.warn_unlisted): never a refusal, as the host may name the plugin differently."""
        with self._lock:
            warn_unlisted(self.description, self.negotiated_version, name,
                          f"remote plugin {self.name!r} at {self.target.text!r}", self._unlisted_warned)

    def pinned_channel(self, key: str) -> PinnedChannel:
        """A new stub's channel pinned to endpoint ``key``; closed with this client, its calls then told what
        its owner says of pinned stubs (stopping_owner), else this client's words. An AsyncRemoteClient's
        pinned stubs are judged by one too."""
        with self._lock:
            self.start()  # refuses a Client killed while pin() waited
            main = self._channel
            assert main is not None
            channel = PinnedChannel(main, self.pool.pinned(key), self.config.call_timeout, None, self.name)
            channel.killed_error = self._pinned_closed
            self._pinned.add(channel)
            return channel

    def aio_channel(self) -> Any:
        """The pool on grpc.aio (plugbay.network.aiopool), on the loop that will use it: what an
        AsyncSupervisor's calls go through while this client is its current one."""
        from plugbay.network.aiopool import AioEndpoints, AioPoolChannel

        return AioPoolChannel(AioEndpoints(self.pool))

    def pin(self, name: str) -> tuple[Any, str, GRPCBroker]:
        """With brokered connections: plugin ``name``, the endpoint its next stub is pinned to and that
        endpoint's broker (plugbay.network.muxpin: round robin, never a lost session while another is up).
        Waits, as a call does, for call_timeout (else start_timeout) in all: for an endpoint to take the stub
        (one restarting comes back), then for its session; until the client closes."""
        return pin_stub(self, name)

    def _describe(self, pool: EndpointPool, deadline: float,
                  answered: bool = False) -> discovery_pb2.DescribeResponse | None:
        return describe(pool, deadline, Asker(self.name, self.target.text, self.remote.start_timeout,
                                              self.remote.handshake.protocol_version, self._stop_if_killed),
                        self._muxes if answered else None)

    def _handshake_info(self, answer: discovery_pb2.DescribeResponse | None) -> HandshakeInfo:
        if answer is not None:
            self.description = answer
        return handshake_info(answer, self.pool.any_key() or self.target.text, self.name,
                              self.remote.handshake.protocol_version, self._versions)

    def close(self) -> None:
        """Disconnect (the same as kill(): a remote plugin is never stopped by a host)."""
        self.kill()

    def _teardown(self, graceful: bool, unanswering: bool = False) -> None:  # it is never stopped
        # first: the calls it cuts are this close()'s doing (ClientClosed), also on pinned stubs (an asyncio one's
        # judge is a PinnedChannel of its own, in _pinned) and those whose callbacks ran on an endpoint's brokered
        # server it stops
        serving = any(mux.serving for mux in self._muxes)
        closed = BrokerClientClosed.of(self.name, self.user_class)
        for mux in self._muxes:  # a pinned stub's broker used from now on says its client was closed
            mux.client_closed(closed)
        for channel in [self._channel, *self._pinned]:
            if channel is not None:
                channel.begin_close(serving)
        self._stop.set()
        if self._channel is not None:
            self._channel.detach()
        for pinned in list(self._pinned):
            pinned.detach()
        if self._broker is not None:
            self._broker.close()
        if self._pool is not None:
            self._pool.close()

    def reattach_config(self) -> NoReturn:
        raise ClientStateError("a RemoteClient has nothing to reattach to: make a new RemoteClient with the"
                               " same target instead")


def connect(target: str, *, handshake: HandshakeConfig, **options: Unpack[RemoteOptions]) -> RemoteClient:
    """A started RemoteClient for ``target``; ``options`` are RemoteConfig's fields (a name it lacks is a
    ConfigError listing them). Use it with ``with``.

        with connect("static:///10.0.0.5:7001", handshake=HANDSHAKE, plugins=PLUGINS,
                     tls=NetworkTLS("host.crt", "host.key", "ca.crt")) as client:
            kv = client.dispense("kv_grpc")
    """
    check_options(RemoteConfig, options)
    client = RemoteClient(RemoteConfig(target=target, handshake=handshake, **options))
    try:
        client.start()
    except BaseException:
        client.kill()
        raise
    return client
