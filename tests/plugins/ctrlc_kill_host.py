"""Host program: Ctrl-C (SIGINT) arrives while Client.kill() waits for the plugin's graceful exit.

Run by tests/test_client_config_checks.py as a subprocess (the SIGINT is its own). The plugin
is busy in a call that never returns, so kill() waits out its grace; the interrupt lands in that
wait. Prints "pid=<plugin pid>" and then "alive=<True|False>" once kill() was interrupted.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import Client, ClientConfig  # noqa: E402

client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, kill_grace=20,
                             call_timeout=30, cmd=[sys.executable, str(REPO / "tests" / "plugins" / "trap_kv.py")]))
client.start()
kv = client.dispense(PLUGIN_NAME)
pid = client.runner.pid
print(f"pid={pid}", flush=True)
threading.Thread(target=lambda: kv.get("__hang__"), daemon=True).start()
time.sleep(0.5)
threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
try:
    client.kill()
except KeyboardInterrupt:
    pass
deadline = time.monotonic() + 5
while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    time.sleep(0.05)
print(f"alive={os.path.exists(f'/proc/{pid}')}", flush=True)
