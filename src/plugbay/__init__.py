"""plugbay: HashiCorp go-plugin's plugin model for Python, over processes, containers and pods.

The public names are the imports in the ``TYPE_CHECKING`` block below: that
block is the one export table. At run time each name is imported on first use
(the table is read from this file's own source), so ``import plugbay`` stays
cheap and a plugin process never loads host-side, runner or resilience code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from plugbay.core.broker.broker import GRPCBroker
    from plugbay.core.broker.plugin import GRPCPlugin, PluginSet, VersionedPlugins
    from plugbay.core.host.client import Client, cleanup_clients
    from plugbay.core.host.config import ClientConfig
    from plugbay.core.host.reattach import ReattachConfig
    from plugbay.core.host.secure import SecureConfig
    from plugbay.core.plugin.netconfig import NetworkServe
    from plugbay.core.plugin.server import ServeConfig, serve
    from plugbay.core.protocol.handshake import HandshakeConfig, HandshakeInfo
    from plugbay.core.resilience.calls import install
    from plugbay.core.resilience.circuit import CircuitBreaker
    from plugbay.core.resilience.healthwatch import HealthWatcher
    from plugbay.core.resilience.retry import RetryPolicy, idempotent
    from plugbay.core.resilience.restart import RestartPolicy, SupervisorEvent
    from plugbay.core.resilience.supervisor import Supervisor
    from plugbay.errors import (
        BrokerClosedError,
        BrokerError,
        BrokerTimeoutError,
        CallFailedError,
        CallTimeoutError,
        ChecksumMismatchError,
        CircuitOpenError,
        ClientStateError,
        ConfigError,
        DiscoveryError,
        EngineUnavailableError,
        GatewayError,
        HandshakeError,
        HandshakeTimeoutError,
        ImageNotFoundError,
        MagicCookieError,
        MalformedHandshakeError,
        NetworkError,
        NoEndpointsError,
        PermissionDeniedError,
        PlugbayError,
        PluginDiedError,
        PluginExitedError,
        PluginUnavailableError,
        PodCrashLoopError,
        PodStartTimeoutError,
        PodUnschedulableError,
        ProtocolMismatchError,
        RemoteTLSError,
        ReattachError,
        RestartBudgetExhaustedError,
        RunnerError,
        TLSConfigError,
        TargetUnreachableError,
        TLSRequiredError,
        UnknownPluginError,
        UnsupportedProtocolError,
        VersionMismatchError,
    )
    from plugbay.network.ejection import OutlierPolicy
    from plugbay.network.remote import RemoteClient, RemoteConfig
    from plugbay.network.tls import NetworkTLS
    from plugbay.runners.base import AttachedRunner, LaunchSpec, Runner
    from plugbay.network.gateway.gateway import Gateway, GatewayConfig
    from plugbay.runners.process import ProcessRunner


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
