"""A KV plugin whose GRPCStdio stream lasts its whole life, as go-plugin >= 1.4 plugins' does.

go-plugin's own plugins (1.4 and later) serve plugin.GRPCStdio, ignore a
host's ask to discard, and keep the stream open, sending what the plugin
writes for as long as it lives. This stand-in (bare grpcio, go-plugin's
handshake line, no plugbay serving code) does the same: its stream sends a
4 KiB chunk every 2 ms, and blocks once the host stops reading (HTTP/2 flow
control). ``Get("__stdio__")`` answers "<chunks sent> <streams open>", so a
test sees that the host keeps reading and that the stream is still open.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
sys.path.insert(0, str(REPO / "src"))
from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402

from plugbay._proto.plugin import grpc_stdio_pb2, grpc_stdio_pb2_grpc  # noqa: E402  (the wire types only)

_lock = threading.Lock()
_sent = 0
_open = 0


class _KV(kv_pb2_grpc.KVServicer):
    def Get(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.key == "__stdio__":
            with _lock:
                return kv_pb2.GetResponse(value=f"{_sent} {_open}".encode())
        return kv_pb2.GetResponse(value=Path(f"kv_{request.key}").read_bytes())

    def Put(self, request: Any, context: grpc.ServicerContext) -> Any:
        Path(f"kv_{request.key}").write_bytes(request.value)
        return kv_pb2.Empty()


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


def _raw(func: Any) -> Any:
    return grpc.unary_unary_rpc_method_handler(func, request_deserializer=None, response_serializer=None)


def main() -> None:
    if os.environ.get("BASIC_PLUGIN") != "hello":
        sys.stderr.write("This binary is a plugin; run it from a host.\n")
        raise SystemExit(1)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    kv_pb2_grpc.add_KVServicer_to_server(_KV(), server)
    grpc_stdio_pb2_grpc.add_GRPCStdioServicer_to_server(_Stdio(), server)  # type: ignore[no-untyped-call]
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
            "Check": _raw(lambda req, ctx: b"\x08\x01")}),  # status: SERVING
        grpc.method_handlers_generic_handler("plugin.GRPCController", {
            "Shutdown": _raw(lambda req, ctx: (stopped.set(), b"")[1])}),
    ))
    folder = tempfile.mkdtemp(prefix="plugin")
    path = os.path.join(folder, "plugin.sock")
    server.add_insecure_port(f"unix:{path}")
    server.start()
    os.write(1, f"1|1|unix|{path}|grpc|\n".encode())
    try:
        while not stopped.wait(0.5):
            pass
    finally:
        server.stop(0).wait(3)
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(folder)


if __name__ == "__main__":
    main()
