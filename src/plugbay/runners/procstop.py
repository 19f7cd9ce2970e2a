"""ProcessStop, a base of ProcessRunner: kill(grace), the force path that stops the plugin's process
group and every descendant found, and record_descendants(), which notes them before a Shutdown.

Apart from process.py (the launch, the exit watch, the output) because the stop is a whole of its own:
whom to signal (the group, strays that left it, orphans carrying PLUGBAY_PLUGIN_ID), when a pid may be
another process's by now, and the order SIGTERM, SIGCONT, grace, SIGKILL, reap.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable

from plugbay.runners.attached import REAP_TIMEOUT
from plugbay.runners.procio import PipeFollower
from plugbay.runners.proclines import ProcessLines
from plugbay.runners.procsecure import SecureCopies
from plugbay.runners.proctree import family, led_group_stands, signal_all, signal_group


class ProcessStop(ProcessLines, SecureCopies):
    """ProcessRunner's kill(); it closes the unread pipes (ProcessLines), the checked copies (SecureCopies)
    and a child cut short in Popen. The runner's fields it reads besides theirs are declared below."""

    _spawner: int | None
    _start_ticks: int | None
    _recorded: dict[int, int]
    _group_ended: bool
    _followers: list[PipeFollower]
    wait: Callable[[float | None], int | None]  # ProcessRunner's (Runner.wait)

    def kill(self, grace: float = 2.0) -> None:
        with self._lock:
            self._ended = "killed"
        if self._spawner not in (None, os.getpid()):  # a forked child's copy: the plugin is the parent's
            return
        proc = self._proc
        if proc is None:
            self._stop.set()
            self._close_verified()
            self._end_unheld()  # a start cut short by Ctrl-C that could not end its child itself
            return
        self._stop_process(grace)

    def record_descendants(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:  # reaped: its pid may be another process's
            return
        found = family(proc.pid, "", self._start_ticks)  # parent links only: the marker is found at kill()
        if proc.returncode is not None:  # reaped during the scan: the links read may be to a new process
            return
        with self._lock:
            self._recorded.update(found)

    def _stop_process(self, grace: float) -> None:
        proc = self._proc
        assert proc is not None
        # Descendants that left the group (their own session) and orphans carrying
        # this plugin's PLUGBAY_PLUGIN_ID: found now, while the tree is intact.
        # With those seen before a Shutdown: a helper with an environment of its own whose parent (the
        # plugin) has exited since is tied to it by nothing else (signal_all skips a pid reused since).
        with self._lock:
            strays = dict(self._recorded)
        root = proc.pid if proc.returncode is None else None
        found = family(root, self.plugin_id, self._start_ticks)
        if root is not None and proc.returncode is not None:  # reaped during the scan (the I/O thread): its
            found = family(None, self.plugin_id, self._start_ticks)  # pid's children may be another's by now
        strays.update(found)
        if proc.poll() is None and grace > 0:
            # SIGCONT after it: a stopped process (SIGSTOP, a debugger's or the terminal's stop) acts on
            # nothing but SIGKILL until continued, and would spend the whole grace with SIGTERM pending
            for sig in (signal.SIGTERM, signal.SIGCONT):
                signal_group(proc.pid, sig)
                signal_all(strays, sig)
            self.wait(grace)
        # The leader may be gone while its children still hold the group (its pid is not reused
        # then). Once a stop ended the group, or the reaped leader's pid names a process again
        # (the group emptied and the pid was reused), or /proc cannot tell (another namespace's),
        # that pid may lead another group: leave it.
        if not self._group_ended and (proc.returncode is None or led_group_stands(proc.pid, None)):
            signal_group(proc.pid, signal.SIGKILL)
        signal_all({**strays, **family(None, self.plugin_id, self._start_ticks)}, signal.SIGKILL)
        try:
            proc.wait(REAP_TIMEOUT)
        except subprocess.TimeoutExpired:  # pragma: no cover - uninterruptible sleep
            pass
        self._group_ended = True
        self._stop.set()
        for follower in self._followers:  # a grandchild may hold a pipe open: end the reading now
            follower.stop()
        self._close_unread()
