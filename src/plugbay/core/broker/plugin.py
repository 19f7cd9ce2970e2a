"""The plugin definition shared by host and plugin: go-plugin's GRPCPlugin, in Python.

As in go-plugin, the same object is given to both sides: the plugin side calls
``grpc_server`` to register its services; the host side calls ``grpc_client``
to build the stub that ``Client.dispense()`` returns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc

    from plugbay.core.broker.broker import GRPCBroker


class GRPCPlugin(ABC):
    """One kind of plugin. Subclass it once and use the instance on both sides."""

    @abstractmethod
    def grpc_server(self, broker: GRPCBroker, server: grpc.Server) -> None:
        """Plugin side: register this plugin's gRPC services on ``server``."""

    @abstractmethod
    def grpc_client(self, broker: GRPCBroker, channel: grpc.Channel) -> Any:
        """Host side: return what dispense() hands the user, built on ``channel``."""


PluginSet = Mapping[str, GRPCPlugin]
VersionedPlugins = Mapping[int, PluginSet]
