"""The KV example plugin with gRPC server reflection registered (opt-in, in the plugin's grpc_server).

Used by tests/test_cli.py: `plugbay info` and `plugbay call` learn the services
from reflection instead of a --proto file. Plain plugins do not load
grpcio-reflection; this one opts in by registering it next to its own service.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402
from plugin import FileKV  # noqa: E402

from plugbay import ServeConfig, serve  # noqa: E402
from plugbay.core.broker.broker import GRPCBroker  # noqa: E402


class ReflectingKV(KVPlugin):
    def grpc_server(self, broker: GRPCBroker, server: grpc.Server) -> None:
        from grpc_reflection.v1alpha import reflection
        from kvproto import kv_pb2

        super().grpc_server(broker, server)
        # the generated code keeps its descriptors in a private pool: reflection serves from that one
        reflection.enable_server_reflection(["proto.KV", reflection.SERVICE_NAME], server,
                                            pool=kv_pb2.DESCRIPTOR.pool)


if __name__ == "__main__":
    serve(ServeConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: ReflectingKV(FileKV())}))
