"""ProcessRunner: a kill() from another thread meets start() at each point it can, every time.

start() is held at a chosen point by its thread's trace function (tests/race_util.py), so
the kill() lands there deterministically: while the launch (Popen) is still returning, the
runner has no process yet and kill() only marks it; once the launch returned but start()
has not, kill() stops the process itself. Either way start() must end with a RunnerError
that says so, no process may be left, a later start() is refused and kill() again is harmless.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from plugbay import SecureConfig
from plugbay.errors import RunnerError
from plugbay.runners import proctree
from plugbay.runners.base import LaunchSpec
from plugbay.runners.process import ProcessRunner
from tests.race_util import PauseAt, Starting, pid_alive, wait_for_file

PY = sys.executable
# Launched: writes its marker, then waits (bounded) before it would print anything.
WAITER = "import sys, time; open(sys.argv[1], 'w').close(); time.sleep(30)"
KILLED = (r"ProcessRunner for '(python[0-9.]*|plugin)' was killed while it started the plugin; plugbay stopped it"
          r" again\. Make a new runner to start the plugin")

# Where start() is held when kill() comes: Popen.__init__ returning (the child runs, the runner
# does not know it yet), or the first thing start() does once it holds the process.
POINTS = {
    "launch-returning": (subprocess.Popen.__init__.__code__, "return"),
    "launched": (proctree.stat_of.__code__, "call"),  # not host_session()'s own look at the host
}
WHEN = {"launched": lambda frame: frame.f_locals.get("pid") != os.getpid()}


@pytest.fixture
def group_signals(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every os.killpg() from now on (passed through): a stopped plugin's group must get none.

    Its leader is reaped, so once the group is empty its pid may lead another process's group.
    """
    sent: list[tuple[int, int]] = []
    real = os.killpg

    def record(pgid: int, sig: int) -> None:
        sent.append((pgid, sig))
        real(pgid, sig)

    monkeypatch.setattr(os, "killpg", record)
    return sent


def _check_refused_after(runner: ProcessRunner, marker: Path, group_signals: list[tuple[int, int]]) -> None:
    marker.unlink(missing_ok=True)
    with pytest.raises(RunnerError, match="was killed; a runner runs one plugin once: make a new runner"):
        runner.start(LaunchSpec(env={}))
    group_signals.clear()
    runner.kill()  # again: harmless
    runner.kill(0)
    assert group_signals == []  # no signal to a process group that may not be the plugin's any more
    assert not marker.exists()  # the refused start launched nothing


@pytest.mark.parametrize("point", sorted(POINTS))
def test_kill_while_start_launches(point: str, tmp_path: Path, group_signals: list[tuple[int, int]]) -> None:
    marker = tmp_path / "launched"
    runner = ProcessRunner([PY, "-c", WAITER, str(marker)])
    pause = PauseAt(*POINTS[point], **({"when": WHEN[point]} if point in WHEN else {}))
    starting = Starting(lambda: runner.start(LaunchSpec(env={}, socket_dir=str(tmp_path))), pause)
    try:
        pause.wait_reached()
        child = pause.frame_locals.get("self") if point == "launch-returning" else None
        pid = child.pid if isinstance(child, subprocess.Popen) else pause.frame_locals.get("pid")
        assert isinstance(pid, int) and pid_alive(pid)
        wait_for_file(marker)  # it really runs
        runner.kill(grace=2.0)  # from this thread, while start() is held
        if point == "launched":
            assert not pid_alive(pid)  # kill() had the process: it stopped it at once
            group_signals.clear()
    finally:
        pause.release()
    error = starting.outcome()
    if point == "launched":
        assert group_signals == []  # start() found it stopped (and reaped): no signal to its old group
    else:  # start() stopped it: its whole group, not only what carries the plugin's marker
        assert (pid, signal.SIGKILL) in group_signals
    assert isinstance(error, RunnerError), error
    assert pid is not None and not pid_alive(pid)  # start() stopped (and reaped) what it launched
    assert runner.has_exited() and runner.wait(0) is not None
    assert re.fullmatch(KILLED, str(error)), error
    _check_refused_after(runner, marker, group_signals)


def test_kill_after_start_returned_while_the_plugin_waits(tmp_path: Path,
                                                          group_signals: list[tuple[int, int]]) -> None:
    """The runner's part of "kill() while the host waits for the handshake line": start() is done."""
    marker = tmp_path / "launched"
    runner = ProcessRunner([PY, "-c", WAITER, str(marker)])
    starting = Starting(lambda: runner.start(LaunchSpec(env={})))
    assert starting.outcome() is None and starting.returned
    wait_for_file(marker)
    pid = runner.pid
    assert pid is not None and pid_alive(pid)
    lines = runner.stdout_lines()
    runner.kill(grace=2.0)
    assert list(lines) == []  # the reader ends: nothing was printed, the pipe is closed
    assert not pid_alive(pid) and runner.wait(0) is not None
    _check_refused_after(runner, marker, group_signals)


def test_kill_while_popen_runs_the_checked_copy(tmp_path: Path, group_signals: list[tuple[int, int]]) -> None:
    """With a SecureConfig, Popen runs the checked in-memory copy by its fd number; a kill() that
    comes meanwhile must not close that fd (the number could then name another file when it runs)."""
    script = tmp_path / "plugin.py"
    script.write_text(WAITER)
    marker = tmp_path / "launched"
    runner = ProcessRunner([PY, str(script), str(marker)])
    runner.check_secure_config(SecureConfig(hashlib.sha256(script.read_bytes()).digest(), path=str(script)))
    pause = PauseAt(subprocess.Popen.__init__.__code__, "call")
    starting = Starting(lambda: runner.start(LaunchSpec(env={})), pause)
    try:
        pause.wait_reached()
        fds = tuple(pause.frame_locals.get("pass_fds") or ())
        assert len(fds) == 1 and os.readlink(f"/proc/self/fd/{fds[0]}").startswith("/memfd:")
        copy = os.fstat(fds[0]).st_ino
        runner.kill(grace=2.0)
        assert os.fstat(fds[0]).st_ino == copy  # still the checked copy Popen is about to pass on
    finally:
        pause.release()
    error = starting.outcome()
    assert isinstance(error, RunnerError) and re.fullmatch(KILLED, str(error)), error
    pid = runner.pid
    assert pid is not None and not pid_alive(pid)
    try:  # start() closed it once the process had it (the number may hold something else by now)
        assert os.fstat(fds[0]).st_ino != copy
    except OSError:
        pass
    _check_refused_after(runner, marker, group_signals)


def _memfds() -> set[int]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:  # the listing's own fd is closed by now
            if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:"):
                found.add(int(fd))
        except OSError:
            pass
    return found


def test_kill_while_the_secure_config_is_checked(tmp_path: Path) -> None:
    """A kill() while check_secure_config() makes the checked copy: the copy is closed once (no leak,
    no double close) and the check says the runner was killed instead of handing start() a copy."""
    script = tmp_path / "plugin.py"
    script.write_text(WAITER)
    runner = ProcessRunner([PY, str(script), str(tmp_path / "launched")])
    before = _memfds()
    config = SecureConfig(hashlib.sha256(script.read_bytes()).digest(), path=str(script))
    pause = PauseAt(SecureConfig.verified_fd.__code__, "return")
    checking = Starting(lambda: runner.check_secure_config(config), pause)
    try:
        pause.wait_reached()
        runner.kill(grace=0)
    finally:
        pause.release()
    error = checking.outcome()
    assert isinstance(error, RunnerError) and "was killed; a runner runs one plugin once" in str(error), error
    assert _memfds() == before
    with pytest.raises(RunnerError, match="was killed"):
        runner.start(LaunchSpec(env={}))


def _spawn_with_pid(pid: int, attempts: int = 20) -> subprocess.Popen[bytes] | None:
    """A process in its own group that the kernel gave ``pid`` (the next pid after ns_last_pid)."""
    for _ in range(attempts):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    return None


def test_kill_after_the_leader_was_reaped_leaves_a_reused_pid_alone(group_signals: list[tuple[int, int]]) -> None:
    """The plugin exits and wait() reaps it; its group empties and the kernel hands its pid to a
    stranger that leads its own group: a later kill() must not signal that group."""
    if not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK):
        pytest.skip("reusing a pid on purpose needs a writable /proc/sys/kernel/ns_last_pid (root)")
    runner = ProcessRunner([PY, "-c", "pass"])
    runner.start(LaunchSpec(env={}))
    pid = runner.pid
    assert pid is not None and runner.wait(30) == 0  # reaped by Popen.wait: the pid is free again
    stranger = _spawn_with_pid(pid)
    if stranger is None:
        pytest.skip(f"pid {pid} was taken by another process 20 times running; the machine is too busy")
    try:
        runner.kill(grace=0)
        assert stranger.poll() is None and (pid, signal.SIGKILL) not in group_signals, group_signals
    finally:
        stranger.kill()
        stranger.wait()
