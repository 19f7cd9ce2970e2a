"""The KV example plugin (reflecting) and two plugins whose private descriptor pools each hold a file named
plugin.proto, of packages a and b (services a.Svc and b.Svc), each registering reflection: reflection lists
both services, but a client keys files by name, so only one plugin.proto can be loaded.

Used by tests/test_cli.py: `plugbay call` to the one that cannot be described says why instead of
"unknown service".
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "tests" / "plugins")]

from reflect_kv import HANDSHAKE, PLUGIN_NAME, FileKV, ReflectingKV  # noqa: E402

from plugbay import GRPCPlugin, ServeConfig, serve  # noqa: E402
from plugbay.core.broker.broker import GRPCBroker  # noqa: E402


class SameFileName(GRPCPlugin):
    """Serves ``package``.Svc/M (echoes its bytes), described by plugin.proto in a pool of its own."""

    def __init__(self, package: str) -> None:
        self.package = package

    def grpc_server(self, broker: GRPCBroker, server: grpc.Server) -> None:
        from grpc_reflection.v1alpha import reflection

        f = descriptor_pb2.FileDescriptorProto(name="plugin.proto", package=self.package, syntax="proto3")
        f.message_type.add(name="Req")
        f.service.add(name="Svc").method.add(name="M", input_type=f".{self.package}.Req",
                                             output_type=f".{self.package}.Req")
        pool = descriptor_pool.DescriptorPool()
        pool.Add(f)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            f"{self.package}.Svc", {"M": grpc.unary_unary_rpc_method_handler(lambda request, context: request)}),))
        reflection.enable_server_reflection([f"{self.package}.Svc", reflection.SERVICE_NAME], server, pool=pool)

    def grpc_client(self, broker: GRPCBroker, channel: grpc.Channel) -> Any:
        return channel


if __name__ == "__main__":
    plugins = {PLUGIN_NAME: ReflectingKV(FileKV()), "clash_a": SameFileName("a"), "clash_b": SameFileName("b")}
    serve(ServeConfig(handshake=HANDSHAKE, plugins=plugins))
