"""Two plugins in one process, each opting into gRPC server reflection (as tests/plugins/reflect_kv.py does):
the KV example and the streaming example, served with the KV handshake.

Used by tests/test_cli.py: `plugbay info` lists and describes both plugins' services from the one
reflection service the process serves.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "tests" / "plugins"), str(REPO / "examples" / "streaming")]

from reflect_kv import HANDSHAKE, PLUGIN_NAME, FileKV, ReflectingKV  # noqa: E402
from streaming_plugin_def import PLUGIN_NAME as STREAMER, StreamerPlugin  # noqa: E402

from plugbay import ServeConfig, serve  # noqa: E402
from plugbay.core.broker.broker import GRPCBroker  # noqa: E402


class ReflectingStreamer(StreamerPlugin):
    def grpc_server(self, broker: GRPCBroker, server: grpc.Server) -> None:
        from grpc_reflection.v1alpha import reflection
        from streamingproto import streaming_pb2

        super().grpc_server(broker, server)
        reflection.enable_server_reflection(["streaming.Streamer", reflection.SERVICE_NAME], server,
                                            pool=streaming_pb2.DESCRIPTOR.pool)


if __name__ == "__main__":
    plugins = {PLUGIN_NAME: ReflectingKV(FileKV()), STREAMER: ReflectingStreamer()}
    serve(ServeConfig(handshake=HANDSHAKE, plugins=plugins))
