"""A KV plugin whose GRPCStdio stream lasts its whole life, as go-plugin >= 1.4 plugins' does.

go-plugin's own plugins (1.4 and later) serve plugin.GRPCStdio, ignore a
host's ask to discard, and keep the stream open, sending what the plugin
writes for as long as it lives. This stand-in is the bench's bare grpcio KV
plugin (bench/floor_kv_plugin.py: go-plugin's handshake line, no plugbay
serving code) plus such a stream: it sends a 4 KiB chunk every 2 ms, and
blocks once the host stops reading (HTTP/2 flow control). ``Get("__stdio__")``
answers "<chunks sent> <streams open>", so a test sees that the host keeps
reading and that the stream is still open.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import grpc

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "src"))
from floor_kv_plugin import _KV, main  # noqa: E402
from kvproto import kv_pb2  # noqa: E402  (put on the path by floor_kv_plugin)

from plugbay._proto.plugin import grpc_stdio_pb2, grpc_stdio_pb2_grpc  # noqa: E402  (the wire types only)

_lock = threading.Lock()
_sent = 0
_open = 0


class _LastingKV(_KV):
    def Get(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.key == "__stdio__":
            with _lock:
                return kv_pb2.GetResponse(value=f"{_sent} {_open}".encode())
        return super().Get(request, context)


class _Stdio(grpc_stdio_pb2_grpc.GRPCStdioServicer):
    def StreamStdio(self, request: Any, context: grpc.ServicerContext) -> Any:
        global _sent, _open
        with _lock:
            _open += 1
        done = threading.Event()
        context.add_callback(done.set)
        try:
            while not done.wait(0.002):
                yield grpc_stdio_pb2.StdioData(channel=grpc_stdio_pb2.StdioData.STDOUT, data=b"o" * 4096)
                with _lock:
                    _sent += 1
        finally:
            with _lock:
                _open -= 1


if __name__ == "__main__":
    main(_LastingKV(), lambda server: grpc_stdio_pb2_grpc.add_GRPCStdioServicer_to_server(  # type: ignore[no-untyped-call]
        _Stdio(), server))
