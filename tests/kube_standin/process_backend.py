"""The stand-in's fallback when no container engine is up: each pod's command runs as a local process.

The backend returns a :class:`ProcessBox` the pod store polls and reads logs
from, as it does a Docker container's (runtime.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Generator

from .podlogs import stamp_now
from .runtime import BoxState, ContainerConfigError, ContainerRequest


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProcessBox:
    kind = "process"

    def __init__(self, proc: subprocess.Popen[bytes], log_path: str, workdir: str,
                 published: dict[int, int]) -> None:
        self._proc = proc
        self._log_path = log_path
        self._workdir = workdir
        self.id = f"pid-{proc.pid}"
        self.published = published
        self._started = _now()
        self._finished: str | None = None
        self._closed = threading.Event()
        self._pumped = threading.Event()  # the process's output is all in the log file
        self._pump = threading.Thread(target=self._stamp_lines, name="plugbay-standin-logpump", daemon=True)
        self._pump.start()

    def _stamp_lines(self) -> None:
        """Copy the process's output to the log file, each line stamped when it came (the kubelet's way)."""
        assert self._proc.stdout is not None
        try:
            with open(self._log_path, "ab") as log:
                for line in iter(self._proc.stdout.readline, b""):
                    log.write(stamp_now() + b" " + line)
                    log.flush()
        finally:
            self._proc.stdout.close()
            self._pumped.set()

    def state(self) -> BoxState:
        code = self._proc.poll()
        if code is None:
            return BoxState(running=True, started_at=self._started)
        if self._finished is None:
            self._finished = _now()
        # a signal death looks like 128+signal, as in a container
        return BoxState(running=False, exit_code=code if code >= 0 else 128 - code,
                        started_at=self._started, finished_at=self._finished)

    def logs(self, follow: bool, tail: int | None) -> Generator[bytes, None, None]:
        with open(self._log_path, "rb") as f:
            data = f.read()
            if tail is not None:
                lines = data.splitlines(keepends=True)
                data = b"".join(lines[-tail:]) if tail else b""
            if data:
                yield data
            while follow and not self._closed.is_set():
                chunk = f.read(65536)
                if chunk:
                    yield chunk
                    continue
                if self._proc.poll() is not None:
                    self._pumped.wait(1.0)  # a child holding the pipe keeps it open: not the log's end
                    rest = f.read()
                    if rest:
                        yield rest
                    return
                time.sleep(0.05)

    def restart(self) -> None:
        raise ContainerConfigError("the process backend does not restart containers")

    def stop(self, grace: float) -> None:
        if self._proc.poll() is not None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGTERM)
            self._proc.wait(timeout=max(grace, 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)
        except ProcessLookupError:
            pass

    def remove(self) -> None:
        self.stop(0)
        self._closed.set()
        self._pump.join(timeout=5)
        shutil.rmtree(self._workdir, ignore_errors=True)


class ProcessBackend:
    """Runs the pod's command as a local process: the stand-in's fallback without an engine.

    The image is not run (there is no engine); the container's ``command`` and
    ``args`` are. Each container port gets a free 127.0.0.1 port, and env values
    naming ``0.0.0.0:<containerPort>`` are rewritten to it, so a plugin that
    listens where PLUGBAY_LISTEN says is reachable where the stand-in forwards.
    """

    kind = "process"

    def close(self) -> None:
        pass

    def run(self, req: ContainerRequest) -> ProcessBox:
        argv = list(req.command or []) + list(req.args or [])
        if not argv:
            raise ContainerConfigError("the process backend needs the container's command")
        published = {p: _free_port() for p in req.ports}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for key, value in req.env.items():
            for port, host_port in published.items():
                value = value.replace(f"0.0.0.0:{port}", f"127.0.0.1:{host_port}")
            env[key] = value
        workdir = tempfile.mkdtemp(prefix="plugbay-standin-")
        log_path = os.path.join(workdir, "log")
        open(log_path, "wb").close()
        proc = subprocess.Popen(argv, env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        # The process announces its host port (it cannot bind 4000 for every pod): forward that too.
        published.update({host_port: host_port for host_port in list(published.values())})
        return ProcessBox(proc, log_path, workdir, published)
