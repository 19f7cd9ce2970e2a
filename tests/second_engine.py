"""A second, real Docker engine for a test: dockerd on a socket, data root and exec root in a temp folder,
with no bridge and no iptables rules, in network and mount namespaces of its own, its own containerd
namespaces, and its own key file, so that it has an ID of its own (engines before 23.0 take it from
/etc/docker/key.json). Stopped, and its folder removed, when the fixture ends; a stop that leaves a mount or a
file behind fails the test run.

The network namespace because a dockerd with no bridge deletes the default bridge interface, docker0, where it
runs: in the machine's namespace that was the machine's engine's, whose containers on the default network (a
PluginContainer's tcp transport, the Kubernetes stand-in's pods) then failed to start ("could not find bridge
docker0") for the rest of the run, and of every run on that machine until its dockerd restarted. The mount
namespace (private propagation) because a dockerd killed with SIGKILL leaves its data root bind-mounted on
itself: in the machine's namespace, for good. The containerd namespaces because a dockerd finding a system
containerd uses it, under the namespace ``moby`` that the machine's engine uses too. Its socket is a file,
reached from any namespace.

dockerd runs in a session of its own (so the test run's Ctrl-C does not reach it half-way); it gets SIGTERM
when the test run's process dies (PR_SET_PDEATHSIG, set by ``setpriv --pdeathsig`` before it execs unshare,
which execs dockerd: the forked child runs no Python, which a test run's threads make unsafe), so a killed
pytest leaves no engine running."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import leakcheck

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
            # its session (dockerd alone: a containerd it started runs in a process group of its own, and gets
            # SIGKILL from the kernel when dockerd dies, dockerd setting its PR_SET_PDEATHSIG)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _mounts_under(folder: Path) -> list[str]:
    """This namespace's mount points in ``folder`` (none, unless one escaped the engine's namespace)."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [point for point in points if point == str(folder) or point.startswith(f"{folder}/")]


def _remove(folder: Path) -> None:
    """Remove the engine's folder, failing loudly on what is left (a mount, a file rmtree could not remove)."""
    mounted = _mounts_under(folder)
    if mounted:
        raise AssertionError(f"the second dockerd left mounts behind: {mounted}; umount them, then remove {folder}")
    shutil.rmtree(folder)  # no ignore_errors: a file left is a failure to see
    if folder.exists():
        raise AssertionError(f"the second dockerd's folder {folder} is still there")


def _has_pdeathsig(setpriv: str) -> bool:
    done = subprocess.run([setpriv, "--help"], capture_output=True, text=True, timeout=30)
    return "--pdeathsig" in done.stdout


def second_engine_running() -> Generator[Engine, None, None]:
    """The body of a fixture: a second engine. Skips only where none can exist (no dockerd, no unshare or
    setpriv with --pdeathsig, not root); one that could start and did not fails the test with its log's tail."""
    import docker

    dockerd, unshare, setpriv = shutil.which("dockerd"), shutil.which("unshare"), shutil.which("setpriv")
    if dockerd is None or unshare is None or setpriv is None or os.geteuid() != 0 or not _has_pdeathsig(setpriv):
        pytest.skip("needs dockerd, unshare and setpriv --pdeathsig (util-linux 2.33+) and root to start a second"
                    " Docker engine")
    folder = Path(tempfile.mkdtemp(prefix="engine2-", dir="/var/tmp"))  # vfs layers: not the test's TMPDIR
    config = folder / "daemon.json"
    config.write_text(json.dumps({"deprecated-key-path": str(folder / "key.json")}))
    url = f"unix://{folder}/docker.sock"
    namespace = f"plugbay-engine2-{secrets.token_hex(4)}"
    log = open(folder / "log", "wb")
    # setpriv execs unshare, which execs dockerd in the new namespaces: proc is dockerd itself
    proc = subprocess.Popen([setpriv, "--pdeathsig", "TERM",
                             unshare, "--net", "--mount", "--propagation", "private", dockerd,
                             "--config-file", str(config), "--host", url,
                             "--data-root", str(folder / "root"), "--exec-root", str(folder / "exec"),
                             "--pidfile", str(folder / "docker.pid"),
                             "--containerd-namespace", namespace,
                             "--containerd-plugins-namespace", f"{namespace}-plugins",
                             "--bridge=none", "--iptables=false", "--ip-masq=false", "--storage-driver=vfs"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    leakcheck.SESSION_HELD.add(proc.pid)
    client = None
    try:
        deadline = time.monotonic() + 60
        while client is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("a second dockerd did not start here: "
                            + (folder / "log").read_text(errors="replace")[-1500:])
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
        try:
            _stop(proc)
        finally:
            leakcheck.SESSION_HELD.discard(proc.pid)
            log.close()
        _remove(folder)
