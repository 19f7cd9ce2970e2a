"""plugbay: HashiCorp go-plugin's plugin model for Python, over processes, containers and pods.

The public names are the imports in the ``TYPE_CHECKING`` block below: that
block is the one export table (each ``Name as Name``: an explicit re-export, which
type checkers in strict mode require). At run time each name is imported on first use
(the table is read from this file's own source), so ``import plugbay`` stays
cheap and a plugin process never loads host-side, runner or resilience code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from plugbay.core.broker.broker import GRPCBroker as GRPCBroker
    from plugbay.core.broker.plugin import (
        GRPCPlugin as GRPCPlugin,
        PluginSet as PluginSet,
        VersionedPlugins as VersionedPlugins,
    )
    from plugbay.core.host.aioclient import AsyncClient as AsyncClient
    from plugbay.core.host.channel import ManagedChannel as ManagedChannel
    from plugbay.core.host.client import Client as Client, cleanup_clients as cleanup_clients
    from plugbay.core.host.config import ClientConfig as ClientConfig
    from plugbay.core.host.reattach import ReattachConfig as ReattachConfig
    from plugbay.core.host.secure import SecureConfig as SecureConfig
    from plugbay.core.plugin.netconfig import NetworkServe as NetworkServe, ServeStop as ServeStop
    from plugbay.core.plugin.server import ServeConfig as ServeConfig, serve as serve
    from plugbay.core.protocol.handshake import HandshakeConfig as HandshakeConfig, HandshakeInfo as HandshakeInfo
    from plugbay.core.resilience.calls import install as install
    from plugbay.core.resilience.circuit import CircuitBreaker as CircuitBreaker, CircuitState as CircuitState
    from plugbay.core.resilience.healthwatch import HealthWatcher as HealthWatcher
    from plugbay.core.resilience.retry import RetryPolicy as RetryPolicy, idempotent as idempotent
    from plugbay.core.resilience.restart import (
        CannotRestartError as CannotRestartError,
        EventKind as EventKind,
        RestartLoopFailedError as RestartLoopFailedError,
        RestartPolicy as RestartPolicy,
        SupervisorEvent as SupervisorEvent,
    )
    from plugbay.core.resilience.aiosupervisor import AsyncSupervisor as AsyncSupervisor
    from plugbay.core.resilience.supervisor import Supervisor as Supervisor
    from plugbay.core.resilience.supervisorview import SupervisorMetrics as SupervisorMetrics
    from plugbay.core.resilience.waiting import SupervisorState as SupervisorState
    from plugbay.errors import (
        AnnouncedUnreachableError as AnnouncedUnreachableError,
        BrokerAddressRefusedError as BrokerAddressRefusedError,
        BrokerClosedError as BrokerClosedError,
        BrokerError as BrokerError,
        BrokerTLSError as BrokerTLSError,
        BrokerTimeoutError as BrokerTimeoutError,
        CallFailedError as CallFailedError,
        CallTimeoutError as CallTimeoutError,
        ChecksumMismatchError as ChecksumMismatchError,
        CircuitOpenError as CircuitOpenError,
        ClientStateError as ClientStateError,
        ConfigError as ConfigError,
        ConnectionWriteTimeoutError as ConnectionWriteTimeoutError,
        DiscoveryError as DiscoveryError,
        DiscoveryPermissionError as DiscoveryPermissionError,
        DiscoveryRefusedError as DiscoveryRefusedError,
        DiscoveryUnavailableError as DiscoveryUnavailableError,
        EngineUnavailableError as EngineUnavailableError,
        GatewayError as GatewayError,
        HandshakeError as HandshakeError,
        HandshakeTimeoutError as HandshakeTimeoutError,
        ImageNotFoundError as ImageNotFoundError,
        MagicCookieError as MagicCookieError,
        MalformedHandshakeError as MalformedHandshakeError,
        NetworkError as NetworkError,
        NetworkSweptError as NetworkSweptError,
        NoEndpointsError as NoEndpointsError,
        NoNewStreamsError as NoNewStreamsError,
        PermissionDeniedError as PermissionDeniedError,
        PinnedEndpointGoneError as PinnedEndpointGoneError,
        PlugbayError as PlugbayError,
        PluginDiedError as PluginDiedError,
        PluginExitedError as PluginExitedError,
        PluginUnavailableError as PluginUnavailableError,
        PodCrashLoopError as PodCrashLoopError,
        PodFailedError as PodFailedError,
        PodStartTimeoutError as PodStartTimeoutError,
        PodUnschedulableError as PodUnschedulableError,
        ProtocolMismatchError as ProtocolMismatchError,
        RemoteProtocolError as RemoteProtocolError,
        RemoteRefusedError as RemoteRefusedError,
        RemoteTLSError as RemoteTLSError,
        ReattachError as ReattachError,
        RestartBudgetExhaustedError as RestartBudgetExhaustedError,
        RunnerError as RunnerError,
        ServerStoppedError as ServerStoppedError,
        SessionRefusedError as SessionRefusedError,
        StaleReattachError as StaleReattachError,
        StubTypeError as StubTypeError,
        TLSConfigError as TLSConfigError,
        TargetUnreachableError as TargetUnreachableError,
        TLSRequiredError as TLSRequiredError,
        UnknownPluginError as UnknownPluginError,
        UnprovenAddressError as UnprovenAddressError,
        UnsupportedProtocolError as UnsupportedProtocolError,
        VersionMismatchError as VersionMismatchError,
    )
    from plugbay.network.aioremote import AsyncRemoteClient as AsyncRemoteClient
    from plugbay.network.ejection import OutlierPolicy as OutlierPolicy
    from plugbay.network.poolmetrics import EndpointMetrics as EndpointMetrics, PoolMetrics as PoolMetrics
    from plugbay.network.remote import RemoteClient as RemoteClient, RemoteConfig as RemoteConfig
    from plugbay.network.tls import NetworkTLS as NetworkTLS
    from plugbay.runners.base import AttachedRunner as AttachedRunner, LaunchSpec as LaunchSpec, Runner as Runner
    from plugbay.network.gateway.gateway import Gateway as Gateway, GatewayConfig as GatewayConfig
    from plugbay.runners.process import ProcessRunner as ProcessRunner


def _export_table() -> dict[str, str]:
    """name -> module, read from the TYPE_CHECKING imports above.

    Read line by line, not with ``ast``: parsing this file was ~1 ms of every
    plugin's start. The block holds only ``from MODULE import NAMES`` statements
    (parenthesized or not, ``as`` aliases allowed); tests/test_layers.py checks the
    table against what ``ast`` sees.
    """
    with open(__file__, encoding="utf-8") as f:  # not pathlib: a plugin may never need it (~8 ms)
        text = f.read()
    block = text[text.index("\nif TYPE_CHECKING:\n") + 19:]
    table: dict[str, str] = {}
    module = ""
    for line in block.splitlines():
        if line and not line.startswith(" "):
            break  # the end of the block
        if line.lstrip().startswith("#"):
            continue
        words = line.replace(",", " ").replace("(", " ").replace(")", " ").split()
        if words[:1] == ["from"] and "import" in words:
            module, words = words[1], words[words.index("import") + 1:]
        for i, word in enumerate(words):
            if word != "as" and (i == 0 or words[i - 1] != "as"):
                alias = words[i + 2] if i + 2 < len(words) and words[i + 1] == "as" else word
                table[alias] = module
    return table


_EXPORTS = _export_table()
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'plugbay' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
