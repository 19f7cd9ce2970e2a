"""A host process that exits with a Gateway still open leaves no plugin behind (the child is not restarted
after the exit cleanup killed it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from tests.resilience_util import wait_until
from tests.test_supervisor_stop import _tagged

REPO = Path(__file__).resolve().parent.parent

_HOST = """
import atexit, sys, time
atexit.register(time.sleep, 4.0)  # other exit work of the host, run after plugbay's cleanup
sys.path[:0] = [{repo!r}, {src!r}]
from tests.resilience_util import FAULTY, PY
from plugbay import Gateway, GatewayConfig
gw = Gateway(GatewayConfig(cmd=[PY, FAULTY], cookie=("BASIC_PLUGIN", "hello"), listen="127.0.0.1:0", insecure=True,
                           plugins=("kv_grpc",), env={{"RESILIENCE_TAG": {tag!r}}}, cwd={cwd!r}))
gw.start()
print("serving", flush=True)
"""


def test_a_host_exiting_with_an_open_gateway_leaves_no_restarted_child(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    script = _HOST.format(repo=str(REPO), src=str(REPO / "src"), cwd=str(tmp_path), tag=tag)
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "serving" in done.stdout
        assert "restarting it" not in done.stderr, done.stderr[-2000:]
        assert wait_until(lambda: not _tagged(tag), 5), f"plugins outlived their host: {_tagged(tag)}"
    finally:
        for pid in _tagged(tag):
            os.kill(pid, signal.SIGKILL)
