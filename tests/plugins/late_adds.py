"""The KV example's plugin, whose code keeps the server grpc_server() gave it and adds to it after serve() returned.

argv[1] names the addition (see ADDITIONS); the outcome goes to the file ``late_add`` in the working
directory as "<exception type>: <message>" (or "returned"), and the process exits 0. grpcio frees a
stopped server: before plugbay refused these, most of them ended the process by a signal instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "examples" / "kv"))
sys.path.insert(0, str(REPO / "examples" / "counter"))

import grpc  # noqa: E402
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402
from counterproto import counter_pb2_grpc  # noqa: E402

from plugbay import GRPCBroker, ServeConfig, serve  # noqa: E402


class MemoryKV:
    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    def get(self, key: str) -> bytes:
        return self.values[key]

    def put(self, key: str, value: bytes) -> None:
        self.values[key] = value


KEPT: list[grpc.Server] = []


class KeepingKV(KVPlugin):
    def grpc_server(self, broker: GRPCBroker, server: grpc.Server) -> None:
        super().grpc_server(broker, server)
        KEPT.append(server)


def _echo(request: Any, context: grpc.ServicerContext) -> Any:
    return request


ADDITIONS = {
    "add_insecure_port": lambda s: s.add_insecure_port("127.0.0.1:0"),
    # not a usable certificate: plugbay refuses before grpcio reads it (grpcio's crash came before, too)
    "add_secure_port": lambda s: s.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(b"k", b"c")])),
    "add_registered_method_handlers": lambda s: s.add_registered_method_handlers(
        "late.Echo", {"Say": grpc.unary_unary_rpc_method_handler(_echo)}),
    "add_generic_rpc_handlers": lambda s: s.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("late.Echo", {"Say": grpc.unary_unary_rpc_method_handler(_echo)}),)),
    # generated code (a service the server had not: grpcio looks one it has up only) adds generic handlers,
    # then registered ones
    "add_CounterServicer_to_server": lambda s: counter_pb2_grpc.add_CounterServicer_to_server(
        counter_pb2_grpc.CounterServicer(), s),
}


def main() -> None:
    addition = ADDITIONS[sys.argv[1]]
    serve(ServeConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KeepingKV(MemoryKV())}))
    try:
        addition(KEPT[0])
        outcome = "returned"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    Path("late_add").write_text(outcome)


if __name__ == "__main__":
    main()
