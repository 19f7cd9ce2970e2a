"""A sweep spares the plugins of a live host in another pid namespace on this machine.

Such a host (a container sharing this machine's name, --network host or --uts host) labels its
plugins with its pid in its own namespace; looked up here, that pid says nothing, so its plugins
are not taken for a gone host's. The host here is a real plugbay host in a pid namespace of its
own (unshare), starting a real container.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from plugbay.runners.docker import sweep
from plugbay.runners.docker.madehere import forget_made
from plugbay.runners.session import HOST_PIDS, host_pids
from tests.test_docker_runner import (
    CRASHING_HOST,  # a real host that starts one container, then sleeps
)

REPO = Path(__file__).resolve().parent.parent


def _unshare() -> list[str]:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare(1) and root to start a host in a pid namespace of its own")
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"this kernel refuses a new pid namespace: {probe.stderr.decode(errors='replace').strip()}")
    return ["unshare", "--pid", "--fork", "--mount-proc"]


def test_a_live_host_in_another_pid_namespace_keeps_its_plugins(plugbay_docker: Any) -> None:
    host = subprocess.Popen([*_unshare(), sys.executable, "-c", CRASHING_HOST, str(REPO / "src")],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    facts: dict[str, Any] = {}
    try:
        assert host.stdout is not None
        facts = json.loads(host.stdout.readline())
        labels = plugbay_docker.containers.get(facts["id"]).labels
        assert labels[HOST_PIDS] and labels[HOST_PIDS] != host_pids()  # same boot, another namespace
        assert labels[HOST_PIDS].split(".")[0] == host_pids().split(".")[0]
        assert facts["id"] not in sweep(dry_run=True)  # its pid, looked up here, said the host was gone
        os.killpg(host.pid, signal.SIGKILL)  # gone now, but nothing here can prove it: still left alone
        host.wait(10)
        assert facts["id"] not in sweep(dry_run=True)
        # the caller's word that it is gone (no session named live), for its session only: a listing of the others
        # named live missed a session that started after it, whose container this sweep would have removed
        assert facts["id"] in sweep(live_sessions=[], sessions=[facts["session"]])
    finally:
        if host.poll() is None:
            os.killpg(host.pid, signal.SIGKILL)
            host.wait(10)
        if host.stdout:
            host.stdout.close()
        if facts:
            for c in plugbay_docker.containers.list(all=True, filters={"label": f"plugbay.session={facts['session']}"}):
                c.remove(force=True)
                forget_made(c.id)  # the crashed host's record of it
            shutil.rmtree(facts["reattach"]["host_socket_dir"], ignore_errors=True)
