"""The counter example's plugin whose Put fails with its own UNAVAILABLE: its handler's call to a service of
its own (a unix socket nobody listens on) fails, and the plugin passes that on, marked as the handler's.

Put writes ``entered`` in the folder given as argv[1], waits (up to 60 s) for a file ``go`` there, then makes
that call. A test ends the Client in between: the answer comes while the host is killing the plugin.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "examples" / "counter"))

import grpc  # noqa: E402
from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin  # noqa: E402

from plugbay import ServeConfig, serve  # noqa: E402

FOLDER = Path(sys.argv[1])


class OwnUnavailable:
    def get(self, key: str) -> int:
        return 0

    def put(self, key: str, value: int, helper: object) -> None:
        (FOLDER / "entered").write_text("1")
        until = time.monotonic() + 60
        while not (FOLDER / "go").exists() and time.monotonic() < until:
            time.sleep(0.01)
        with grpc.insecure_channel(f"unix://{FOLDER / 'nobody-listens.sock'}") as channel:
            channel.unary_unary("/own.Service/Call")(b"", timeout=10)  # UNAVAILABLE: raised, passed on


serve(ServeConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin(OwnUnavailable())}))
