"""A hung test ends as a failure with every thread's stack, never as a run that does not end.

pytest-timeout fails a test that outlives its timeout with SIGALRM, but the Python handler only runs
once the main thread is back in the interpreter. A main thread waiting for the GIL, or in C code that
retries an interrupted wait, never is: the run then hangs until CI kills it, and prints nothing about
where. Past a test's timeout this watch, in two steps:

- ``NUDGE`` seconds later (a Python thread): prints every thread's stack and sends SIGALRM to the main
  thread itself, whose wait a signal delivered to another thread does not interrupt; pytest-timeout's
  handler then fails the test and the run goes on.
- ``END`` seconds later (faulthandler's own thread, which needs no GIL): prints every stack and ends
  the process.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import threading
import time
from collections.abc import Generator

import pytest

# seconds past a test's timeout; the environment may shorten them (tests/test_hangwatch.py does)
NUDGE = float(os.environ.get("PLUGBAY_TEST_HANG_NUDGE", "30"))
END = float(os.environ.get("PLUGBAY_TEST_HANG_END", "120"))


class _Watch:
    def __init__(self, fd: int) -> None:
        self.fd = fd  # the real stderr: a test's stderr is captured, and lost if the process ends
        self.lock = threading.Lock()
        self.test: tuple[str, float] | None = None  # nodeid, when its nudge is due
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="test-hangwatch", daemon=True)

    def _run(self) -> None:
        main = threading.main_thread().ident
        while not self.stop.wait(2.0):
            with self.lock:
                due = self.test is not None and time.monotonic() >= self.test[1]
                nodeid = self.test[0] if self.test is not None else ""
                if due:
                    self.test = None  # once per test
            if due and main is not None:
                handled = callable(signal.getsignal(signal.SIGALRM))  # SIG_DFL would end the process
                os.write(self.fd, f"\n+++ {nodeid} outlived its timeout by {NUDGE:.0f} s: every thread's"
                                  f" stack{', then SIGALRM to the main thread' if handled else ''} +++\n".encode())
                faulthandler.dump_traceback(file=self.fd, all_threads=True)
                if handled:
                    signal.pthread_kill(main, signal.SIGALRM)


_watch: _Watch | None = None


def _timeout(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    try:
        return float(item.config.getini("timeout") or 0)
    except ValueError:  # pytest-timeout is not loaded: no timeout
        return 0.0


def pytest_configure(config: pytest.Config) -> None:
    global _watch
    if hasattr(signal, "pthread_kill"):
        _watch = _Watch(os.dup(2))  # capture is suspended while plugins configure: fd 2 is the terminal's
        _watch.thread.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    global _watch
    if _watch is not None:
        _watch.stop.set()
        _watch.thread.join(5)
        os.close(_watch.fd)
        _watch = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    timeout = _timeout(item)
    if _watch is None or timeout <= 0:
        return (yield)
    with _watch.lock:
        _watch.test = (item.nodeid, time.monotonic() + timeout + NUDGE)
    faulthandler.dump_traceback_later(timeout + END, exit=True, file=_watch.fd)
    try:
        return (yield)
    finally:
        faulthandler.cancel_dump_traceback_later()
        with _watch.lock:
            _watch.test = None
