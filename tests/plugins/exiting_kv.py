"""Plugins that exit by themselves once they started (argv[1] picks how).

mute       listen on a unix socket that never speaks HTTP/2, print a handshake line for it and one
           stderr line, then exit 3 after 0.2 s: the host's health check is still waiting for it
stdio      the bench's bare grpcio KV plugin with a GRPCStdio stream, as go-plugin >= 1.4 serves it:
           Get("bye") has the stream send 400 numbered stdout lines, and the process exit 0 50 ms
           later without ending it, as a Go plugin that prints its last lines and returns from main
health     the same KV plugin, exiting 0 0.2 s after its first health Check answer
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "src"))
from floor_kv_plugin import _KV, _raw, main  # noqa: E402
from kvproto import kv_pb2  # noqa: E402  (put on the path by floor_kv_plugin)

from plugbay._proto.plugin import grpc_stdio_pb2, grpc_stdio_pb2_grpc  # noqa: E402  (the wire types only)

LINES = 400
_bye = threading.Event()


class _ByeKV(_KV):
    def Get(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.key == "bye":
            _bye.set()
            return kv_pb2.GetResponse(value=b"ok")
        return super().Get(request, context)


class _LastWords(grpc_stdio_pb2_grpc.GRPCStdioServicer):
    def StreamStdio(self, request: Any, context: grpc.ServicerContext) -> Any:
        _bye.wait(120)
        for i in range(LINES):
            yield grpc_stdio_pb2.StdioData(channel=grpc_stdio_pb2.StdioData.STDOUT, data=f"line {i}\n".encode())
        time.sleep(0.05)  # its last bytes on the wire: the process ends, the stream with it
        os._exit(0)


def _exit_after_first_check(request: bytes, context: grpc.ServicerContext) -> bytes:
    threading.Timer(0.2, os._exit, (0,)).start()
    return b"\x08\x01"  # SERVING


def _mute() -> None:
    folder = os.environ.get("PLUGIN_UNIX_SOCKET_DIR") or "/tmp"
    path = os.path.join(folder, f"mute-{os.getpid()}.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(5)
    sys.stdout.write(f"1|1|unix|{path}|grpc|\n")
    sys.stdout.flush()
    sys.stderr.write("exiting_kv: gave up serving\n")
    sys.stderr.flush()
    time.sleep(0.2)
    os.unlink(path)
    raise SystemExit(3)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "mute":
        _mute()
    elif mode == "stdio":
        main(_ByeKV(), lambda server: grpc_stdio_pb2_grpc.add_GRPCStdioServicer_to_server(  # type: ignore[no-untyped-call]
            _LastWords(), server))
    elif mode == "health":
        main(_KV(), lambda server: server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health", {"Check": _raw(_exit_after_first_check)}),)))
