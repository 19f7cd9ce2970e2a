"""The stand-in in a process of its own, as a real API server runs apart from its clients.

The in-process :class:`StandIn` shares its caller's GIL: every frame it relays
for a port-forward waits for the caller's threads (and theirs for it), which a
kube-apiserver never does. The bench's pod rows therefore run the stand-in with
:class:`SeparateStandIn`. Tests keep the in-process one: its fault knobs
(deny, drop_portforwards, delete_pod, start_delay) are plain method calls.

The child serves on 127.0.0.1 only; it stops when its stdin closes (``stop()``,
or this process dying), removing its pods' containers as ``StandIn.stop`` does.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0  # the child removes its pods' containers before it exits


class SeparateStandIn:
    """``with SeparateStandIn() as s: KubernetesRunner(image, kubeconfig=s.kubeconfig)``."""

    def __init__(self, runtime: str = "docker") -> None:
        self.runtime = runtime
        self.kubeconfig = ""
        self._dir: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._starts: list[float] = []

    def start(self) -> SeparateStandIn:
        self._dir = tempfile.mkdtemp(prefix="plugbay-standin-sep-")
        path = os.path.join(self._dir, "kubeconfig.yaml")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.kube_standin", "--kubeconfig", path, "--runtime", self.runtime,
             "--until-stdin-closes"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(REPO), env=env)
        try:
            line = _readline(self._proc, START_TIMEOUT)
            if line.strip() != path:
                raise RuntimeError(f"the stand-in process did not start (said {line!r}); run"
                                   f" `python -m tests.kube_standin` to see why")
        except BaseException:
            self.stop()
            raise
        self.kubeconfig = path
        return self

    def container_start_seconds(self) -> list[float]:
        """The engine's create+start time of each pod's container; known once stopped."""
        return list(self._starts)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            assert proc.stdin is not None
            proc.stdin.close()  # the child's cue to stop
            try:
                line = _readline(proc, STOP_TIMEOUT)
                if line.strip():
                    self._starts = list(json.loads(line).get("container_start_seconds", []))
                proc.wait(timeout=STOP_TIMEOUT)
            except (subprocess.TimeoutExpired, ValueError):
                proc.kill()
                proc.wait()
            finally:
                if proc.stdout is not None:
                    proc.stdout.close()
        if self._dir is not None:
            for name in os.listdir(self._dir):
                os.unlink(os.path.join(self._dir, name))
            os.rmdir(self._dir)
            self._dir = None

    def __enter__(self) -> SeparateStandIn:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _readline(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """One line of the child's stdout, or what came before ``timeout`` or EOF."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    out = b""
    fd = proc.stdout.fileno()
    while not out.endswith(b"\n") and (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 1)
        if not chunk:
            break
        out += chunk
    return out.decode(errors="replace")
