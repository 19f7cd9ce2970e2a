"""A second, real Docker engine for a test: dockerd on a socket, data root and exec root in a temp folder,
with no bridge and no iptables rules, in a network namespace of its own, and its own key file, so that it
has an ID of its own (engines before 23.0 take it from /etc/docker/key.json). Stopped and its folder removed
when the fixture ends.

The namespace because a dockerd with no bridge deletes the default bridge interface, docker0, where it runs:
in the machine's namespace that was the machine's engine's, whose containers on the default network (a
PluginContainer's tcp transport, the Kubernetes stand-in's pods) then failed to start ("could not find bridge
docker0") for the rest of the run, and of every run on that machine until its dockerd restarted. Its socket
is a file, reached from any namespace."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass
class Engine:
    url: str  # DOCKER_HOST for it
    client: Any  # a docker SDK client of it


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # dockerd stops its containerd and removes its socket
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def second_engine_running() -> Iterator[Engine]:
    """The body of a fixture: a second engine, skipping the test where none can be started here."""
    import docker

    dockerd, unshare = shutil.which("dockerd"), shutil.which("unshare")
    if dockerd is None or unshare is None or os.geteuid() != 0:
        pytest.skip("needs dockerd, unshare (util-linux) and root to start a second Docker engine")
    folder = Path(tempfile.mkdtemp(prefix="engine2-", dir="/var/tmp"))  # vfs layers: not the test's TMPDIR
    config = folder / "daemon.json"
    config.write_text(json.dumps({"deprecated-key-path": str(folder / "key.json")}))
    url = f"unix://{folder}/docker.sock"
    log = open(folder / "log", "wb")
    # unshare execs dockerd in the new namespace: proc is dockerd itself
    proc = subprocess.Popen([unshare, "--net", dockerd, "--config-file", str(config), "--host", url,
                             "--data-root", str(folder / "root"), "--exec-root", str(folder / "exec"),
                             "--pidfile", str(folder / "docker.pid"),
                             "--bridge=none", "--iptables=false", "--ip-masq=false", "--storage-driver=vfs"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    client = None
    try:
        deadline = time.monotonic() + 60
        while client is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip("a second dockerd did not start here: "
                            + (folder / "log").read_text(errors="replace")[-600:])
            if (folder / "docker.sock").exists():
                try:
                    client = docker.DockerClient(base_url=url, version="auto", timeout=10)
                    client.ping()
                except Exception:
                    if client is not None:
                        client.close()
                    client = None
            if client is None:
                time.sleep(0.2)
        yield Engine(url, client)
    finally:
        if client is not None:
            client.close()
        _stop(proc)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
