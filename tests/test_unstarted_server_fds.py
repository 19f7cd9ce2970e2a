"""A gRPC server whose bind failed is freed: grpc core's poller does not stay in the process.

grpcio frees a server it never started at no point, and with it keeps grpc core's poller (two epoll
sets, two eventfds) for the rest of the process. broker/spares.py started such a server (listening
nowhere) before stopping it; a network host session's instance (core/plugin/network.py) and serve()'s
own server (core/plugin/server.py) did not: in a process that goes on (serve() on a thread of the
program's own, whose port was taken; a host session whose socket could not be made) each failure
left the four descriptors. Each case runs in a fresh process (tests/plugins/failed_bind_fds.py): the
poller is one per process, so any other server or channel of this test run's would hide it.

That cleanup's start() must not raise over the set-up's error (a process out of threads), and a server
it started has served no call: its stop is given no grace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugbay.core.transport.unstarted import stop_server

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


UNSTARTABLE = REPO / "tests" / "plugins" / "unstartable_server.py"


@pytest.mark.parametrize("where, error", [("session", "ValueError: the plugin's own registration error"),
                                          ("spare", "BrokerError: ")])
def test_a_server_that_cannot_start_leaves_the_set_up_error(where: str, error: str, tmp_path: Path) -> None:
    # the cleanup's start() of the unstarted server raised RuntimeError("can't start new thread") over the
    # set-up's own error, skipped the instance's stop (its socket file stayed) and later hung
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_"))}
    env["PYTHONPATH"] = str(REPO / "src")
    done = subprocess.run([sys.executable, str(UNSTARTABLE), where], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["raised"] is not None and result["raised"].startswith(error), (result, done.stderr[-2000:])
    assert not result["socket_left"] and result["threads_left"] == [], result


class GraceSeen:
    """A real gRPC server that notes the grace each stop() is given."""

    def __init__(self, server: grpc.Server) -> None:
        self.server, self.graces = server, []  # type: tuple[grpc.Server, list[float | None]]

    def start(self) -> None:
        self.server.start()

    def stop(self, grace: float | None) -> Any:
        self.graces.append(grace)
        return self.server.stop(grace)


@pytest.mark.parametrize("started, grace", [(False, 0), (True, 1.5)])
def test_only_a_started_server_is_given_its_grace(started: bool, grace: float, tmp_path: Path) -> None:
    # serve()'s close after a set-up that failed past its bind started the server to free it, then gave it
    # STOP_GRACE (1.5 s) to finish calls it could never have taken
    with ThreadPoolExecutor(1) as executor:
        server = GraceSeen(grpc.server(executor))
        server.server.add_insecure_port(f"unix:{tmp_path / 's.sock'}")
        if started:
            server.start()
        stop_server(server, 1.5)  # type: ignore[arg-type]
    assert server.graces == [grace]
