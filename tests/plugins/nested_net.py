"""A plugbay plugin (plugbay.serve; network mode under PLUGBAY_NETWORK_*) whose handlers pass a nested
call's status through, as a handler whose backend is down does.

plugbay.test.Nested/Unary and /Stream (a server stream: one message "first", then the nested call) call a
gRPC backend that is not there (a socket in the working folder) and let its grpc.RpcError (UNAVAILABLE)
propagate: the plugin answers UNAVAILABLE, marked plugbay-handler-status. With NESTED_UNMARKED=1 the
handlers abort with UNAVAILABLE themselves instead (no mark: what a failing replica answers). The counter
example's handshake; the plugin's name is "nested".
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "examples" / "counter"))

import grpc  # noqa: E402
from counter_plugin_def import HANDSHAKE  # noqa: E402

from plugbay import GRPCBroker, GRPCPlugin, ServeConfig, serve  # noqa: E402

NAME = "nested"
SERVICE = "plugbay.test.Nested"


def _nested(context: grpc.ServicerContext) -> None:
    if os.environ.get("NESTED_UNMARKED") == "1":
        context.abort(grpc.StatusCode.UNAVAILABLE, "this replica is failing")
    with grpc.insecure_channel(f"unix:{Path.cwd() / 'no-such-backend.sock'}") as channel:
        channel.unary_unary("/backend.Backend/Get")(b"", timeout=30)


def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    _nested(context)
    return b"reached"


def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    yield b"first"
    _nested(context)


class NestedPlugin(GRPCPlugin):
    def grpc_server(self, broker: GRPCBroker, server: grpc.Server) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream)}),))

    def grpc_client(self, broker: GRPCBroker, channel: grpc.Channel) -> Any:
        return channel

    def grpc_client_async(self, broker: GRPCBroker, channel: Any) -> Any:
        return channel


if __name__ == "__main__":
    serve(ServeConfig(handshake=HANDSHAKE, plugins={NAME: NestedPlugin()}))
