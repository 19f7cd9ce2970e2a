"""go-plugin's GRPCController for the plugin side: Shutdown, which asks serve() to stop.

A service of its own, as health.py and stdioservice.py are, registered by server.py. Shutdown takes
and answers a plugin.Empty, so it needs no generated code: none is loaded for it.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

CONTROLLER = "plugin.GRPCController"


def add_to_server(server: grpc.Server, stop: Callable[[], None]) -> None:
    """plugin.GRPCController: Shutdown (Empty -> Empty) needs no generated code, so none is loaded."""

    def shutdown(request: bytes, context: grpc.ServicerContext) -> bytes:
        stop()  # the reply goes out before the server stops: stop() only wakes serve()
        return b""  # an encoded plugin.Empty

    handlers = {"Shutdown": grpc.unary_unary_rpc_method_handler(shutdown)}  # bytes in and out
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(CONTROLLER, handlers),))
    server.add_registered_method_handlers(CONTROLLER, handlers)
