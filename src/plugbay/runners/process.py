"""The local-process runner: the plugin as a child process in its own process group.

Mirrors go-plugin's ``cmdrunner``: the plugin gets the host's environment
(unless ``skip_host_env``) plus the handshake variables, stdin from /dev/null,
and its stdout/stderr as pipes. The process leads a new session so a force kill
reaches everything it started (a ``sh -c`` wrapper and its child alike).

``kill(grace)`` is the force path: the Client asks GRPCController.Shutdown
first; the runner sends SIGTERM to the group, waits ``grace`` seconds, then
SIGKILLs the group and reaps the child, so no zombie is left.

A host that did not start the plugin can reattach by pid (see
:class:`AttachedProcess`); it watches the pid through /proc.
"""

from __future__ import annotations

import collections
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from plugbay.core.transport.lines import LineSplitter
from plugbay.errors import ConfigError, RunnerError
from plugbay.runners.base import AttachedRunner, LaunchSpec, Runner, SecureCheck, register_reattacher
from plugbay.runners.session import proc_stat, start_ticks

_POLL = 0.2
_TAIL = 50
_REAP_TIMEOUT = 10.0
# Exit code reported for a reattached process: the host is not its parent, so
# the real code is unknowable.
UNKNOWN_EXIT_CODE = -1


def resolve_executable(cmd0: str, env: Mapping[str, str] | None = None) -> str:
    """cmd[0] as the OS will run it: a path, or the first match on PATH."""
    if os.sep in cmd0:
        return os.path.abspath(cmd0)
    path = (env or os.environ).get("PATH", os.defpath)
    found = shutil.which(cmd0, path=path)
    if found is None:
        raise ConfigError(f"plugin command {cmd0!r} is not on PATH ({path}); give its full path")
    return os.path.abspath(found)


class ProcessRunner(Runner):
    """Runs ``cmd`` as a local child process. One instance runs the plugin once."""

    def __init__(self, cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike[str] | None = None, skip_host_env: bool = False) -> None:
        if not cmd or not all(isinstance(part, str) for part in cmd):
            raise ConfigError(f"ProcessRunner needs a non-empty list of strings as cmd, got {cmd!r}")
        self.cmd = list(cmd)
        self.env = dict(env or {})
        self.cwd = os.fspath(cwd) if cwd is not None else None
        self.skip_host_env = skip_host_env
        self._proc: subprocess.Popen[bytes] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._iterating: set[str] = set()
        # one per output stream read: each bounds its unfinished line (see core.transport.lines)
        self.splitters: list[LineSplitter] = []

    # --- identity -------------------------------------------------------------

    @property
    def name(self) -> str:
        base = os.path.basename(self.cmd[0])
        # `python plugin.py` is better named after the script than the interpreter.
        if base.startswith("python") and len(self.cmd) > 1 and self.cmd[1].endswith(".py"):
            return os.path.splitext(os.path.basename(self.cmd[1]))[0]
        return base

    @property
    def id(self) -> str:
        return str(self._proc.pid) if self._proc is not None else ""

    @property
    def private_transport(self) -> bool:
        return True  # a child process on this machine: go-plugin's own model

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # --- lifecycle ------------------------------------------------------------

    def start(self, spec: LaunchSpec) -> None:
        if self._proc is not None:
            raise RunnerError(f"ProcessRunner for {self.name!r} was already started; make a new runner")
        env: dict[str, str] = {} if self.skip_host_env else dict(os.environ)
        env.update(self.env)
        env.update(spec.env)
        if spec.socket_dir and "TMPDIR" not in self.env:
            # go-plugin < 1.5 ignores PLUGIN_UNIX_SOCKET_DIR and makes its socket in $TMPDIR;
            # pointing that at the private dir too means kill() removes it either way.
            env["TMPDIR"] = spec.socket_dir
        try:
            self._proc = subprocess.Popen(
                self.cmd, env=env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, bufsize=0,
            )
        except OSError as exc:
            raise RunnerError(
                f"cannot start plugin {self.cmd!r}: {exc}. Check the path, the executable bit"
                " and the working directory."
            ) from exc

    def has_exited(self) -> bool:
        if self._proc is None:
            return False
        # /proc shows a zombie at once, while wait(0) may report "running" when another
        # thread is polling the same child at that moment.
        fields = proc_stat(self._proc.pid)
        return fields is None or fields[0] in ("Z", "X")

    def exit_detail(self) -> str:
        return ""  # the process runner's diagnosis would only repeat the stderr tail

    def check_secure_config(self, secure: SecureCheck) -> None:
        secure.check(resolve_executable(self.cmd[0], dict(self.env) if self.skip_host_env else None))

    def wait(self, timeout: float | None = None) -> int | None:
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self, grace: float = 2.0) -> None:
        proc = self._proc
        if proc is None:
            self._stop.set()
            return
        if proc.poll() is None and grace > 0:
            _signal_group(proc.pid, signal.SIGTERM)
            self.wait(grace)
        # The leader may be gone while its children still hold the group.
        _signal_group(proc.pid, signal.SIGKILL)
        try:
            proc.wait(_REAP_TIMEOUT)
        except subprocess.TimeoutExpired:  # pragma: no cover - uninterruptible sleep
            pass
        self._stop.set()
        self._close_unread()

    def reattach_data(self) -> dict[str, Any]:
        pid = self._proc.pid if self._proc is not None else 0
        return {"kind": "ProcessRunner", "id": str(pid), "pid": pid, "name": self.name,
                "start_time": _start_time(pid)}

    # --- output -----------------------------------------------------------------

    def stdout_lines(self) -> Iterator[str]:
        return self._lines("stdout")

    def stderr_lines(self) -> Iterator[str]:
        return self._lines("stderr")

    def diagnose(self) -> str:
        if self._proc is None:
            return f"plugin {self.name!r} was never started"
        code = self._proc.poll()
        state = "still running" if code is None else f"exited with code {code}"
        if code is not None and code < 0:
            state += f" (killed by {signal.Signals(-code).name})"
        lines = "\n".join("    " + line for line in list(self._tail)[-10:]) or "    (none)"
        return f"process {self._proc.pid} ({' '.join(self.cmd)}) {state}; last stderr lines:\n{lines}"

    def stderr_tail(self) -> list[str]:
        return list(self._tail)

    def _lines(self, which: str) -> Iterator[str]:
        proc = self._proc
        if proc is None:
            raise RunnerError("ProcessRunner.start() must run before its output is read")
        pipe: IO[bytes] | None = proc.stdout if which == "stdout" else proc.stderr
        assert pipe is not None
        with self._lock:
            if which in self._iterating or pipe.closed:
                raise RunnerError(f"the plugin's {which} can be read by one reader only")
            self._iterating.add(which)
        return self._read_lines(pipe, which == "stderr")

    def _read_lines(self, pipe: IO[bytes], keep_tail: bool) -> Iterator[str]:
        # poll() with a timeout instead of a blocking read: a grandchild that
        # escaped the process group could hold the pipe open forever, and kill()
        # must be able to end this iterator.
        fd = pipe.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP)
        splitter = LineSplitter()
        self.splitters.append(splitter)
        try:
            while True:
                if not poller.poll(_POLL * 1000):
                    if self._stop.is_set():
                        break
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                for line in splitter.feed(chunk):
                    if keep_tail:
                        self._tail.append(line)
                    yield line
            for line in splitter.flush():
                if keep_tail:
                    self._tail.append(line)
                yield line
        finally:
            with self._lock:
                pipe.close()

    def _close_unread(self) -> None:
        proc = self._proc
        if proc is None:
            return
        with self._lock:
            for which, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
                if pipe is not None and which not in self._iterating and not pipe.closed:
                    pipe.close()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _start_time(pid: int) -> int | None:
    """The process start time in clock ticks: tells a pid from a reused one."""
    ticks = start_ticks(pid)
    return int(ticks) if ticks else None


def _proc_state(pid: int) -> str | None:
    fields = proc_stat(pid)
    return fields[0] if fields else None


class AttachedProcess(AttachedRunner):
    """A plugin process this host did not start (reattach by pid).

    It is not our child, so its exit code is unknowable: wait() polls /proc and
    returns UNKNOWN_EXIT_CODE once the process is gone.
    """

    def __init__(self, pid: int, start_time: int | None = None, name: str = "") -> None:
        self.pid = pid
        self._start_time = start_time
        self._name = name or str(pid)

    @property
    def id(self) -> str:
        return str(self.pid)

    @property
    def private_transport(self) -> bool:
        return True  # a child process on this machine: go-plugin's own model

    def _alive(self) -> bool:
        try:  # if it happens to be our child after all (same process reattaching), reap it
            os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pass
        state = _proc_state(self.pid)
        if state is None or state in ("Z", "X"):
            return False
        return self._start_time is None or _start_time(self.pid) == self._start_time

    def wait(self, timeout: float | None = None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._alive():
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(0.05)
        return UNKNOWN_EXIT_CODE

    def kill(self, grace: float = 2.0) -> None:
        if not self._alive():
            return
        try:
            group = self.pid if os.getpgid(self.pid) == self.pid else None
        except ProcessLookupError:
            return
        if grace > 0:
            self._signal(group, signal.SIGTERM)
            self.wait(grace)
        if self._alive():
            self._signal(group, signal.SIGKILL)
            self.wait(_REAP_TIMEOUT)

    def _signal(self, group: int | None, sig: int) -> None:
        try:
            if group is not None:
                os.killpg(group, sig)
            else:
                os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def reattach_data(self) -> dict[str, Any]:
        return {"kind": "ProcessRunner", "id": str(self.pid), "pid": self.pid, "name": self._name,
                "start_time": self._start_time}


def _reattach(data: Mapping[str, Any]) -> AttachedRunner:
    try:
        pid = int(data["pid"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"ProcessRunner reattach data needs an integer 'pid', got {dict(data)!r}") from None
    start = data.get("start_time")
    runner = AttachedProcess(pid, int(start) if start is not None else None, str(data.get("name", "")))
    if not runner._alive():
        raise RunnerError(
            f"cannot reattach: plugin process {pid} is no longer running (or its pid was reused);"
            " start the plugin again"
        )
    return runner


register_reattacher("ProcessRunner", _reattach)
