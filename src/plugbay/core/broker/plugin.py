"""The plugin definition shared by host and plugin: go-plugin's GRPCPlugin, in Python.

As in go-plugin, the same object is given to both sides: the plugin side calls
``grpc_server`` to register its services; the host side calls ``grpc_client``
to build the stub that ``Client.dispense()`` returns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from plugbay.core.protocol.checks import kind
from plugbay.core.protocol.handshake import HandshakeConfig
from plugbay.errors import ConfigError

if TYPE_CHECKING:
    import grpc
    import grpc.aio

    from plugbay.core.broker.broker import GRPCBroker


class GRPCPlugin(ABC):
    """One kind of plugin. Subclass it once and use the instance on both sides."""

    @abstractmethod
    def grpc_server(self, broker: GRPCBroker, server: grpc.Server) -> None:
        """Plugin side: register this plugin's gRPC services on ``server``."""

    @abstractmethod
    def grpc_client(self, broker: GRPCBroker, channel: grpc.Channel) -> Any:
        """Host side: return what dispense() hands the user, built on ``channel``."""

    def grpc_client_async(self, broker: GRPCBroker, channel: grpc.aio.Channel) -> Any:
        """Host side under AsyncClient: what its dispense() hands the user, built on a grpc.aio ``channel``.

        Only plugins used with AsyncClient need it; a generated stub takes the channel as is.
        """
        raise ConfigError(
            f"{type(self).__name__} has no grpc_client_async(), which AsyncClient.dispense() needs; define it"
            " to build your async stub on the grpc.aio channel it gets (a generated stub takes that channel"
            " as is), or build the generated stub on AsyncClient.channel yourself")


PluginSet = Mapping[str, GRPCPlugin]
VersionedPlugins = Mapping[int, PluginSet]


def check_plugin_set(plugins: Any, where: str) -> None:
    """``plugins`` must map names to GRPCPlugin instances: ConfigError naming ``where`` otherwise
    (host and plugin side alike, before anything starts)."""
    if not isinstance(plugins, Mapping):
        raise ConfigError(f"{where} must be a dict of plugin name -> GRPCPlugin instance, such as"
                          f" {{'kv': KVPlugin()}}; got {type(plugins).__name__}")
    for name, plugin in plugins.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where} has key {name!r}: plugin names are non-empty strings")
        if isinstance(plugin, type):
            raise ConfigError(f"{where}[{name!r}] is the class {plugin.__name__}: pass an instance,"
                              f" {plugin.__name__}()")
        if not isinstance(plugin, GRPCPlugin):
            raise ConfigError(f"{where}[{name!r}] ({type(plugin).__name__}) is not a GRPC-compatible plugin;"
                              " make it a plugbay.GRPCPlugin subclass instance")


def check_versioned_plugins(versioned: Any, where: str) -> None:
    """``versioned`` must map protocol versions (whole numbers) to plugin sets (ConfigError otherwise)."""
    if not isinstance(versioned, Mapping):
        raise ConfigError(f"{where} must be a dict of protocol version (int) -> plugin set, got"
                          f" {type(versioned).__name__}")
    for version, plugins in versioned.items():
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ConfigError(f"{where} has key {version!r}: keys are protocol versions, integers such as 1 or 2")
        check_plugin_set(plugins, f"{where}[{version}]")


def check_plugin_fields(owner: str, handshake: Any, plugins: Any, versioned: Any, handshake_hint: str) -> None:
    """A ClientConfig's or a ServeConfig's handshake, plugins and versioned_plugins (ConfigError naming
    ``owner``'s field); ``handshake_hint`` says what to pass there."""
    if not isinstance(handshake, HandshakeConfig):
        raise ConfigError(f"{owner}.handshake must be a HandshakeConfig, got {kind(handshake)}; {handshake_hint}")
    if plugins is not None:
        check_plugin_set(plugins, f"{owner}.plugins")
    if versioned is not None:
        check_versioned_plugins(versioned, f"{owner}.versioned_plugins")
