"""ProcessRunner.kill(): the plugin reaped (by the I/O thread) while kill() walks /proc for its
descendants, and its pid given to a stranger at once: the stranger's children are no descendants of
the plugin, and must be left alone.

kill() is held as its walk begins (tests/race_util.PauseAt); meanwhile the test reaps the plugin as
the I/O thread's exit watch does (Popen.poll) and starts a stranger at the plugin's pid
(ns_last_pid), which starts a child. Then the walk goes on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import pytest

from plugbay.runners import proctree
from plugbay.runners.session import proc_stat
from plugbay.runners.base import LaunchSpec
from plugbay.runners.process import ProcessRunner
from tests.race_util import BOUND, PauseAt, Starting

NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"
# a service of its own with a child, unrelated to plugbay; it tells how its child ended
STRANGER = "sleep 30 & echo $!; wait $!; echo $?"


def _stranger_at(pid: int, attempts: int = 20) -> tuple[subprocess.Popen[bytes], int] | None:
    """A process the kernel gave ``pid``, and its child's pid."""
    for _ in range(attempts):
        with open(NS_LAST_PID, "w") as f:
            f.write(str(pid - 1))
        proc = subprocess.Popen(["/bin/sh", "-c", STRANGER], stdout=subprocess.PIPE, start_new_session=True)
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        if proc.pid == pid:
            return proc, child
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    return None


def test_a_plugin_reaped_during_the_walk_leaves_the_new_owner_of_its_pid_alone() -> None:
    if not os.access(NS_LAST_PID, os.W_OK):
        pytest.skip("reusing a pid on purpose needs a writable /proc/sys/kernel/ns_last_pid (root)")
    runner = ProcessRunner(["/bin/sh", "-c", "exit 0"])
    runner.start(LaunchSpec(env={}))
    pid = runner.pid
    assert pid is not None
    deadline = time.monotonic() + BOUND
    while (fields := proc_stat(pid)) is not None and fields[0] != "Z":  # exited, not reaped
        assert time.monotonic() < deadline, "the plugin did not exit"
        time.sleep(0.01)
    pause = PauseAt(proctree.family.__code__, "call", lambda frame: frame.f_locals.get("root") == pid)
    killing = Starting(lambda: runner.kill(grace=0), pause)
    stranger = None
    try:
        pause.wait_reached()
        assert runner._proc is not None and runner._proc.poll() == 0  # as the I/O thread's exit watch does
        stranger = _stranger_at(pid)
    finally:
        pause.release()
    assert killing.outcome() is None
    if stranger is None:
        pytest.skip(f"pid {pid} was taken by another process 20 times running; the machine is too busy")
    proc, child = stranger
    try:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGTERM)  # ended by its own service: 143; had kill() reached it: 137
        assert proc.stdout is not None
        status = proc.stdout.readline().decode().strip()
        assert status == str(128 + signal.SIGTERM), f"the stranger's child ended with {status}: kill() of a" \
            " reaped plugin SIGKILLed a child of the process that got its pid"
        assert proc.wait(BOUND) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
