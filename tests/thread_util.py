"""Which threads a test's host holds, and waiting for that to change (the thread-count tests share these)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def thread_names() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.is_alive() and t is not threading.main_thread())


def plugbay_threads() -> list[str]:
    # but plugbay-spawn, which lives for the process by design (the die_with_host children it forked die with it)
    return [name for name in thread_names() if name.startswith("plugbay-") and name != "plugbay-spawn"]


def until(check: Callable[[], object], timeout: float, step: float = 0.05) -> bool:
    """Whether ``check()`` came true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return bool(check())  # a last look: a late wake-up from the sleep must not lose the deadline's turn


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 20, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: threads {thread_names()}")
        time.sleep(step)


def run_all(threads: list[threading.Thread], bound: float) -> None:
    """Start every thread, join each within ``bound`` seconds, and fail if any is still running."""
    for t in threads:
        t.start()
    for t in threads:
        t.join(bound)
    assert not any(t.is_alive() for t in threads), [t.name for t in threads if t.is_alive()]
