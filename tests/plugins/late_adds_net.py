"""The counter example's plugin in network mode, whose code keeps each server grpc_server() gave it.

Once a file ``add_now`` appears in the working directory (looked for every 50 ms, for 120 s at most), a
thread of its own adds a port to the last server kept (the latest host session's, once that session
ended) and writes the outcome to ``late_add`` as "<exception type>: <message>" (or "returned"); serve()
goes on until SIGTERM. grpcio frees a stopped server: before plugbay refused it, the addition ended the
process by a signal.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "examples" / "counter"))

import grpc  # noqa: E402
from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin  # noqa: E402
from plugin import FileCounter  # noqa: E402  (examples/counter/plugin.py)

from plugbay import GRPCBroker, ServeConfig, serve  # noqa: E402

KEPT: list[grpc.Server] = []


class KeepingCounter(CounterPlugin):
    def grpc_server(self, broker: GRPCBroker, server: grpc.Server) -> None:
        super().grpc_server(broker, server)
        KEPT.append(server)


def add_when_asked() -> None:
    deadline = time.monotonic() + 120
    while not Path("add_now").exists():
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)
    try:
        KEPT[-1].add_insecure_port("127.0.0.1:0")
        outcome = "returned"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    Path("late_add.part").write_text(outcome)
    os.replace("late_add.part", "late_add")  # whole when it appears: the test reads it as soon as it exists


if __name__ == "__main__":
    threading.Thread(target=add_when_asked, daemon=True).start()
    serve(ServeConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KeepingCounter(FileCounter())}))
