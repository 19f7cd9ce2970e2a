"""A gRPC server whose bind failed is freed: grpc core's poller does not stay in the process.

grpcio frees a server it never started at no point, and with it keeps grpc core's poller (two epoll
sets, two eventfds) for the rest of the process. broker/spares.py started such a server (listening
nowhere) before stopping it; a network host session's instance (core/plugin/network.py) and serve()'s
own server (core/plugin/server.py) did not: in a process that goes on (serve() on a thread of the
program's own, whose port was taken; a host session whose socket could not be made) each failure
left the four descriptors. Each case runs in a fresh process (tests/plugins/failed_bind_fds.py): the
poller is one per process, so any other server or channel of this test run's would hide it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "plugins" / "failed_bind_fds.py"


@pytest.mark.parametrize("where", ["session", "spare", "thread"])
def test_a_failed_bind_leaves_no_descriptor(where: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_"))}
    env["PYTHONPATH"] = str(REPO / "src")
    done = subprocess.run([sys.executable, str(SCRIPT), where], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "bind failed" in done.stderr or "couldn't listen" in done.stderr, done.stderr[-2000:]
    counts = json.loads(done.stdout.splitlines()[-1])
    assert counts["after"] == counts["before"], (counts, done.stderr[-2000:])
