"""plugbay: HashiCorp go-plugin's plugin model for Python, over processes, containers and pods."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public names, imported on first use so `import plugbay` stays cheap and a
# plugin process does not load host-side code (and vice versa).
_EXPORTS: dict[str, str] = {
    "Client": "plugbay.core.client",
    "ClientConfig": "plugbay.core.client",
    "serve": "plugbay.core.server",
    "ServeConfig": "plugbay.core.server",
    "HandshakeConfig": "plugbay.core.handshake",
    "HandshakeInfo": "plugbay.core.handshake",
    "GRPCPlugin": "plugbay.core.plugin",
    "GRPCBroker": "plugbay.core.broker",
    "ProcessRunner": "plugbay.runners.process",
    "ReattachConfig": "plugbay.core.reattach",
    "SecureConfig": "plugbay.core.secure",
    "PlugbayError": "plugbay.core.errors",
    "ConfigError": "plugbay.core.errors",
    "HandshakeError": "plugbay.core.errors",
    "MagicCookieError": "plugbay.core.errors",
    "PluginExitedError": "plugbay.core.errors",
    "HandshakeTimeoutError": "plugbay.core.errors",
    "MalformedHandshakeError": "plugbay.core.errors",
    "ProtocolMismatchError": "plugbay.core.errors",
    "UnsupportedProtocolError": "plugbay.core.errors",
    "VersionMismatchError": "plugbay.core.errors",
    "ChecksumMismatchError": "plugbay.core.errors",
    "UnknownPluginError": "plugbay.core.errors",
    "ClientStateError": "plugbay.core.errors",
    "PluginDiedError": "plugbay.core.errors",
    "CallTimeoutError": "plugbay.core.errors",
    "CircuitOpenError": "plugbay.core.errors",
    "RunnerError": "plugbay.core.errors",
    "EngineUnavailableError": "plugbay.core.errors",
    "ImageNotFoundError": "plugbay.core.errors",
    "PermissionDeniedError": "plugbay.core.errors",
    "BrokerError": "plugbay.core.errors",
    "BrokerTimeoutError": "plugbay.core.errors",
    "BrokerClosedError": "plugbay.core.errors",
    "RestartBudgetExhaustedError": "plugbay.core.errors",
    "RetryPolicy": "plugbay.core.retry",
    "idempotent": "plugbay.core.retry",
    "CircuitBreaker": "plugbay.core.circuit",
    "HealthWatcher": "plugbay.core.healthwatch",
    "Supervisor": "plugbay.core.supervisor",
    "RestartPolicy": "plugbay.core.supervisor",
    "SupervisorEvent": "plugbay.core.supervisor",
}

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


if TYPE_CHECKING:
    from plugbay.core.broker import GRPCBroker
    from plugbay.core.circuit import CircuitBreaker
    from plugbay.core.client import Client, ClientConfig
    from plugbay.core.errors import (
        BrokerClosedError,
        BrokerError,
        BrokerTimeoutError,
        CallTimeoutError,
        ChecksumMismatchError,
        CircuitOpenError,
        ClientStateError,
        ConfigError,
        EngineUnavailableError,
        HandshakeError,
        HandshakeTimeoutError,
        ImageNotFoundError,
        MagicCookieError,
        MalformedHandshakeError,
        PermissionDeniedError,
        PlugbayError,
        PluginDiedError,
        PluginExitedError,
        ProtocolMismatchError,
        RestartBudgetExhaustedError,
        RunnerError,
        UnknownPluginError,
        UnsupportedProtocolError,
        VersionMismatchError,
    )
    from plugbay.core.handshake import HandshakeConfig, HandshakeInfo
    from plugbay.core.healthwatch import HealthWatcher
    from plugbay.core.plugin import GRPCPlugin
    from plugbay.core.reattach import ReattachConfig
    from plugbay.core.retry import RetryPolicy, idempotent
    from plugbay.core.secure import SecureConfig
    from plugbay.core.server import ServeConfig, serve
    from plugbay.core.supervisor import RestartPolicy, Supervisor, SupervisorEvent
    from plugbay.runners.process import ProcessRunner
