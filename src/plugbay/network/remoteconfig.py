"""RemoteConfig's fields: how a RemoteClient reaches a plugin served on the network, checked as they are given.

plugbay.network.remote's RemoteConfig is this dataclass with make_client(), the RemoteClient it configures,
which lives there (its module imports this one)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from plugbay.core.broker.plugin import PluginSet, VersionedPlugins
from plugbay.core.host.config import ClientConfig
from plugbay.core.protocol.handshake import HandshakeConfig
from plugbay.core.transport.grpcping import DEFAULT as GRPC_KEEPALIVE
from plugbay.core.transport.keepalive import DEFAULT as DEFAULT_KEEPALIVE
from plugbay.network.ejection import OutlierPolicy
from plugbay.network.figures import check_transport
from plugbay.network.remote_end import RemoteEnd
from plugbay.network.tls import NetworkTLS

@dataclass
class RemoteFields:
    """How to reach a plugin served on the network: plugbay.network.remote.RemoteConfig's fields."""

    target: str
    handshake: HandshakeConfig
    plugins: PluginSet | None = None
    versioned_plugins: VersionedPlugins | None = None
    tls: NetworkTLS | None = None
    insecure: bool = False  # plaintext: only on a network you trust
    dns_server: str | None = None  # "IP[:PORT]"; default: /etc/resolv.conf
    dns_refresh: float = 30.0
    # dns:/// and kubernetes:/// answers naming loopback addresses are refused unless this is set: a spoofed
    # answer must not aim calls carrying the host's certificate at this host's own services
    allow_loopback: bool = False
    kubernetes: Mapping[str, Any] = field(default_factory=dict)  # kubernetes:///: kubeconfig=, context=
    policy: str = "round_robin"  # or "pick_first"
    outlier: OutlierPolicy | None = None
    health_interval: float = 1.0
    health_timeout: float = 1.0
    start_timeout: float = 30.0  # for discovery and the first Describe answer
    call_timeout: float | None = 30.0
    grpc_options: Sequence[tuple[str, Any]] = ()
    name: str | None = None
    logger: logging.Logger | None = None
    multiplex: bool = False  # insist on brokered connections (else: when Discovery offers them)
    # False: decline brokered connections even when offered (plain gRPC per endpoint: calls skip the yamux
    # session and its TLS relay, about 0.2 ms each, and the broker is refused)
    brokered: bool = True
    mux_keepalive: tuple[float, ...] = DEFAULT_KEEPALIVE  # as ClientConfig's, for each endpoint's session
    # plain gRPC connections (not multiplexed): one with calls in flight and nothing arriving for [0]
    # seconds is pinged, and closed, its calls failing UNAVAILABLE, when no answer comes within [1], or
    # when any ping (gRPC's flow-control probes too) goes unanswered for [2] (default 60: above what a
    # slow link may queue before the answer); None: off (a stream without deadline to a stopped or
    # cut-off endpoint then waits for good)
    grpc_keepalive: tuple[float, ...] | None = GRPC_KEEPALIVE

    def __post_init__(self) -> None:
        # refused as the config is made, not at start() (the pool's own check) nor at RemoteClient(): the
        # line that asks for both is the one to fix
        check_transport("RemoteConfig", self.tls, self.insecure, neither_allowed=True)

    def client_config(self) -> ClientConfig:
        """The ClientConfig the RemoteClient carries (plugin sets, timeouts, name)."""
        return ClientConfig(handshake=self.handshake, plugins=self.plugins,
                            versioned_plugins=self.versioned_plugins, runner=RemoteEnd(self.target),
                            start_timeout=self.start_timeout, call_timeout=self.call_timeout,
                            name=self.name or "remote", grpc_options=self.grpc_options, logger=self.logger)
