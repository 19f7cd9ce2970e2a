"""Running the plugbay command as a subprocess in tests: one-shot commands and a `plugbay run` in the background."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
KV_PLUGIN = REPO / "examples" / "kv" / "plugin.py"
KV_PROTO = REPO / "protos" / "examples" / "kv.proto"


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")])
    env.pop("NO_COLOR", None)
    env.update(extra)
    return env


def plugbay(*args: str, timeout: float = 90, env: dict[str, str] | None = None,
            cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m plugbay ARGS` to completion (bounded), output captured (a pipe: no colour)."""
    return subprocess.run([sys.executable, "-m", "plugbay", *args], capture_output=True, text=True,
                          timeout=timeout, env=env or cli_env(), cwd=cwd, stdin=subprocess.DEVNULL)


class Running:
    def __init__(self, proc: subprocess.Popen[str], reattach: Path) -> None:
        self.proc = proc
        self.reattach = reattach
        self.stdout = ""
        self.stderr = ""

    @property
    def target(self) -> str:
        return f"@{self.reattach}"

    def config(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.reattach.read_text())
        return data

    def interrupt(self, timeout: float = 60) -> int:
        """SIGINT (Ctrl-C) and wait for the command to finish; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=10)
        self.stdout += out
        self.stderr += err
        return self.proc.returncode


@contextmanager
def running(run_args: Sequence[str], tmp: Path, *, start_timeout: float = 120,
            env: dict[str, str] | None = None) -> Iterator[Running]:
    """`plugbay run ... --reattach-out FILE` in the background until its reattach file appears."""
    reattach = tmp / "reattach.json"
    proc = subprocess.Popen([sys.executable, "-m", "plugbay", "run", *run_args, "--reattach-out", str(reattach)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or cli_env(),
                            cwd=tmp, stdin=subprocess.DEVNULL)
    run = Running(proc, reattach)
    try:
        deadline = time.monotonic() + start_timeout
        while not reattach.exists() or not reattach.read_text().endswith("}"):
            if proc.poll() is not None or time.monotonic() > deadline:
                run.interrupt(10)
                raise AssertionError(f"plugbay run did not start (exit {proc.returncode}):\n{run.stdout}\n{run.stderr}")
            time.sleep(0.05)
        yield run
    finally:
        run.interrupt()


@contextmanager
def serving(server: Any, address: str = "127.0.0.1:0") -> Iterator[str]:
    """The grpcio ``server`` started on ``address`` (host:port, or unix:PATH), stopped on the way out; the
    target the CLI dials meanwhile (the caller's own finally, inside, runs before the stop)."""
    port = server.add_insecure_port(address)
    server.start()
    try:
        yield f"unix://{address[5:]}" if address.startswith("unix:") else f"static:///127.0.0.1:{port}"
    finally:
        server.stop(0).wait(10)
