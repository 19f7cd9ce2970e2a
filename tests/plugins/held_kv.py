"""The KV example's plugin with one handler slot (ServeConfig.max_workers=1), served with PLUGBAY_NETWORK_*.

Get answers the process's pid for any key but these: "hold" writes ``held`` in the working directory,
then waits (up to 120 s) for a file ``release`` there: its caller holds the one slot until then, so
every further call is refused by the handler gate. "busy" is the plugin's own RESOURCE_EXHAUSTED
(the handler ran, no mark); "forged" the same with a NOT_SENT trailer of a value it made up. Each of
those two appends its key to ``ran`` first.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "examples" / "kv"))

import grpc  # noqa: E402
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin, _KVServicer  # noqa: E402
from kvproto import kv_pb2  # noqa: E402

from plugbay import ServeConfig, serve  # noqa: E402
from plugbay.core.protocol.notsent import NOT_SENT  # noqa: E402


class HeldKV:
    def get(self, key: str) -> bytes:
        if key == "hold":
            Path("held").touch()
            deadline = time.monotonic() + 120
            while not Path("release").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            return b"released"
        return str(os.getpid()).encode()

    def put(self, key: str, value: bytes) -> None:
        Path(f"kv_{key}").write_bytes(value)


class Servicer(_KVServicer):
    def Get(self, request: kv_pb2.GetRequest, context: grpc.ServicerContext) -> kv_pb2.GetResponse:
        if request.key in ("busy", "forged"):
            with open("ran", "a") as ran:
                ran.write(request.key + "\n")
            if request.key == "forged":
                context.set_trailing_metadata(((NOT_SENT, "0" * 32),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"the plugin's own {request.key} refusal")
        return super().Get(request, context)


class HeldPlugin(KVPlugin):
    def grpc_server(self, broker: object, server: grpc.Server) -> None:
        from kvproto import kv_pb2_grpc

        kv_pb2_grpc.add_KVServicer_to_server(Servicer(HeldKV()), server)


if __name__ == "__main__":
    serve(ServeConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: HeldPlugin()}, max_workers=1))
