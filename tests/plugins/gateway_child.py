"""A go-plugin-style plugin for the gateway tests: plain grpcio (no plugbay serve()) and a handshake line.

  /gwchild.S/Hold  answers when its caller cancels (or after 60 s), so a test can keep calls in flight
  /gwchild.S/Fast  answers at once
  /gwchild.S/Rich  fails INVALID_ARGUMENT with rich status details in grpc-status-details-bin, as
                   Go's status.WithDetails(...) does, beside an application trailer
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc

from plugbay.core.plugin.health import SERVING, HealthServicer, add_to_server

# a serialized google.rpc.Status (code 3, message "bad")
DETAILS = b"\x08\x03\x12\x03bad"


class _Rich(grpc.Status):  # type: ignore[misc]
    code = grpc.StatusCode.INVALID_ARGUMENT
    details = "bad"
    trailing_metadata = (("grpc-status-details-bin", DETAILS), ("x-app", "kept"))


def hold(request: bytes, context: grpc.ServicerContext) -> bytes:
    gone = threading.Event()
    context.add_callback(gone.set)
    gone.wait(60)
    return b"held"


def rich(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort_with_status(_Rich())
    raise AssertionError("abort_with_status returned")


def main() -> None:
    # more threads than any test keeps in flight: the gateway, not this plugin, must be the limit
    server = grpc.server(ThreadPoolExecutor(max_workers=160))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("gwchild.S", {
        "Hold": grpc.unary_unary_rpc_method_handler(hold),
        "Fast": grpc.unary_unary_rpc_method_handler(lambda request, context: b"fast"),
        "Rich": grpc.unary_unary_rpc_method_handler(rich),
    }),))
    health = HealthServicer()
    health.set_status("", SERVING)
    health.set_status("plugin", SERVING)
    add_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"1|1|tcp|127.0.0.1:{port}|grpc|", flush=True)
    server.wait_for_termination(300)


if __name__ == "__main__":
    main()
