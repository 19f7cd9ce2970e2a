"""A KV-handshake plugin whose registration fails: serve() reports a setup error and exits 1."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path[:0] = [str(REPO / "examples" / "kv"), str(REPO / "src")]

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME  # noqa: E402

from plugbay import GRPCPlugin, ServeConfig, serve  # noqa: E402


class FailingPlugin(GRPCPlugin):
    def grpc_server(self, broker, server):  # type: ignore[no-untyped-def]
        raise ValueError("database URL not set; export KV_DB")

    def grpc_client(self, broker, channel):  # type: ignore[no-untyped-def]
        return None


if __name__ == "__main__":
    serve(ServeConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: FailingPlugin()}))
