"""A streaming plugin whose Echo answers grpcio's own "Exception iterating requests!" (UNKNOWN): the
handler passes on a stream call of its own whose request iterator raised, as a plugin forwarding its
work would (plugbay marks it as the handler's answer). The nested call goes to a sink server of the
plugin's own, on 127.0.0.1."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO / "examples" / "streaming"))
sys.path.insert(0, str(REPO / "src"))

from streaming_plugin_def import HANDSHAKE, PLUGIN_NAME, StreamerPlugin, StreamerServicer  # noqa: E402
from streamingproto import streaming_pb2  # noqa: E402

from plugbay import ServeConfig, serve  # noqa: E402


def _drained(requests: Iterator[Any], context: grpc.ServicerContext) -> bytes:
    for _ in requests:
        pass
    return b""


class ForwardingStreamer(StreamerServicer):
    def __init__(self, sink: grpc.Channel) -> None:
        super().__init__()
        self._sink = sink.stream_unary("/sink.Sink/Take", request_serializer=streaming_pb2.Chunk.SerializeToString,
                                       response_deserializer=lambda b: b)

    def Echo(self, request_iterator: Iterator[streaming_pb2.Chunk],
             context: grpc.ServicerContext) -> Iterator[streaming_pb2.Chunk]:
        next(request_iterator)  # the host's first request; its iterator then waits for this call's end

        def broken() -> Iterator[streaming_pb2.Chunk]:
            yield streaming_pb2.Chunk(seq=0)
            raise RuntimeError("the plugin's own source broke")

        self._sink(broken(), timeout=30)  # raises grpcio's UNKNOWN "Exception iterating requests!"
        yield streaming_pb2.Chunk(seq=1)  # never reached


if __name__ == "__main__":
    sink = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    sink.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "sink.Sink", {"Take": grpc.stream_unary_rpc_method_handler(
            _drained, request_deserializer=streaming_pb2.Chunk.FromString, response_serializer=lambda b: b)}),))
    port = sink.add_insecure_port("127.0.0.1:0")
    sink.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        serve(ServeConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: StreamerPlugin(ForwardingStreamer(channel))}))
    sink.stop(None)
