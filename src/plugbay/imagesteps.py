"""The steps of plugbay's image builds (plugbay.images): its commands and the lock builds share.

Each command (debootstrap, docker import, pip) runs in a process group of its own, its output
passed on line by line as progress; a step cut short ends the whole group. Builds in several
processes (pytest workers) take one lock file in turn, waiting a bounded time for it.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from plugbay.errors import RunnerError

Progress = Callable[[str], None]
LOCK_WAIT = 900.0  # a base image build takes about a minute, all example images a few


@contextmanager
def build_lock(folder: Path, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Hold ``folder``/.lock, the one image build at a time of every process building there."""
    # Several pytest processes may ask for the same image at once; a build stuck elsewhere must not
    # keep this one waiting for ever.
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RunnerError(f"another image build has held {folder / '.lock'} for over {wait:.0f} s; let it"
                                      " finish, or end it (`fuser -v` on that file names it) and build again") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_step(cmd: Sequence[str], progress: Progress, *, what: str, stdin: Any = None) -> None:
    """Run ``cmd`` to its end, each output line to ``progress``; RunnerError when it fails."""
    # its own process group, ended with it when reading is cut short (Ctrl-C, a progress callback that
    # raises): a debootstrap left running would write on under a rootfs folder being removed
    proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            progress(f"{what}: {line.rstrip()}")
        code = proc.wait()
    except BaseException:
        _end_group(proc)
        raise
    finally:
        proc.stdout.close()
    if code != 0:
        raise RunnerError(f"{what} failed (exit {code}): {' '.join(cmd)}; see the lines above")


def _end_group(proc: subprocess.Popen[str]) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
