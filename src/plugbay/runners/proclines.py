"""ProcessLines, a base of ProcessRunner: its stdout/stderr pipes read line by line in the
reader's own thread (stdout_lines(), stderr_lines()), the unread pipes closed on a stop, and
the child of a start cut short inside Popen ended."""

from __future__ import annotations

import collections
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import IO

from plugbay.core.transport.lines import LineSplitter
from plugbay.errors import RunnerError
from plugbay.runners.attached import REAP_TIMEOUT
from plugbay.runners.proctree import family, signal_all, signal_group, stat_of

_POLL = 0.2
_DRAIN = 1.0  # after kill(): how long the pipes are still read


class ProcessLines:
    """The pipe reads; ProcessRunner sets the attributes."""

    _proc: subprocess.Popen[bytes] | None
    _lock: threading.Lock
    _stop: threading.Event
    _iterating: set[str]
    _tail: collections.deque[str]
    _unheld: subprocess.Popen[bytes] | None
    splitters: list[LineSplitter]
    plugin_id: str

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
        splitter = LineSplitter(handshake_first=not keep_tail)  # stdout: the handshake line first
        self.splitters.append(splitter)
        drain_until: float | None = None
        try:
            while True:
                if self._stop.is_set():
                    # what the dead plugin wrote is read for a moment more; a stray that escaped the
                    # kill and writes on (more often than every _POLL) must not keep the reader going
                    drain_until = drain_until or time.monotonic() + _DRAIN
                    if time.monotonic() >= drain_until:
                        break
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

    def _end_unheld(self) -> None:
        """SIGKILL and reap the child of a Popen cut short (no self._proc to stop it through).

        Its pid is proven this runner's: the Popen forked it and nothing has reaped it, so neither that
        pid nor a process group of that number can be another process's. Before its exec it does not
        carry PLUGBAY_PLUGIN_ID yet; what it started since does, or descends from it.
        """
        proc, pid = self._unheld, getattr(self._unheld, "pid", None)
        for pipe in (getattr(proc, "stdout", None), getattr(proc, "stderr", None)):
            if pipe is not None:  # a Ctrl-C late in Popen, after its own cleanup could run: they stay open
                pipe.close()
        if proc is None or pid is None or proc.returncode is not None:  # no fork, or reaped
            self._unheld = None
            return
        facts = stat_of(pid)
        strays = family(pid, self.plugin_id, facts[1] if facts is not None else None)
        signal_group(pid, signal.SIGKILL)  # once it made its group (process_group=0): what is in it
        try:
            os.kill(pid, signal.SIGKILL)  # before that, the child alone
        except ProcessLookupError:  # pragma: no cover - a child not reaped is never missing
            pass
        signal_all(strays, signal.SIGKILL)
        try:
            proc.wait(REAP_TIMEOUT)
        except subprocess.TimeoutExpired:  # pragma: no cover - uninterruptible sleep
            return
        self._unheld = None
