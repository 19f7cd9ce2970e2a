"""Multiplexed brokering (PLUGIN_MULTIPLEX_GRPC): placeholder until the yamux session lands."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from plugbay._proto.plugin import grpc_broker_pb2 as pb
from plugbay.core.errors import ConfigError

if TYPE_CHECKING:
    from plugbay.core.broker import GRPCBroker


class MuxSession:
    """The yamux session over the plugin's one connection."""


def serve_multiplexed(broker: GRPCBroker, id: int, server: grpc.Server,
                      cleanup: list[Callable[[], None]]) -> None:
    raise ConfigError("multiplexed brokering is not available yet; use per-connection mode")


def dial_multiplexed(broker: GRPCBroker, id: int, timeout: float) -> grpc.Channel:
    raise ConfigError("multiplexed brokering is not available yet; use per-connection mode")


def on_knock(broker: GRPCBroker, msg: pb.ConnInfo) -> None:
    pass
