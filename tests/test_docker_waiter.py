"""The Docker exit waiter: wait requests the engine breaks while the container runs are not an exit."""

from __future__ import annotations

import threading

import pytest

from plugbay.runners.docker import waiter as waiter_module
from plugbay.runners.docker.waiter import ExitWaiter


class _Broken(ExitWaiter):
    """Every wait request breaks ``breaks`` times (a proxy's idle timeout), then the container exits 7;
    the engine answers each inspect in between: still running."""

    def __init__(self, breaks: int) -> None:
        super().__init__("c0ffeec0ffee", lambda: {"Running": True}, lambda: None)
        self.breaks, self.requests = breaks, 0

    def _wait_once(self) -> int:
        self.requests += 1
        if self.requests <= self.breaks:
            raise OSError("the engine connection dropped")
        return 7

    def start(self) -> None:  # no engine client: this waiter never talks to one
        self._client = None
        self._thread.start()


def test_a_running_container_whose_wait_keeps_breaking_is_not_reported_exited(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waiter_module, "reconnect_pause", lambda failures: 0.01)  # the pauses grow to 8 s
    waiter = _Broken(breaks=14)  # more than the 12 tries in a row the engine may leave unanswered
    waiter.start()
    try:
        assert waiter.wait(60) == 7, "a live container was reported as exited"
        assert waiter.requests == 15
    finally:
        waiter.stop(5)


class _NoPause(threading.Event):
    """stop()'s event, whose pauses end at once (a real run of this length takes hours)."""

    def wait(self, timeout: float | None = None) -> bool:
        return self.is_set()


def test_a_wait_that_breaks_for_hours_is_still_watched_at_the_longest_pause() -> None:
    # Past 1025 broken requests in a row, 0.25 * 2.0 ** (n - 1) overflowed a float: the watch
    # thread died there, and the container's exit was never reported.
    waiter = _Broken(breaks=1100)
    waiter._stopped = _NoPause()
    waiter.start()
    try:
        assert waiter.wait(60) == 7
        assert waiter.requests == 1101
    finally:
        waiter.stop(5)
    assert waiter_module.reconnect_pause(1100) == 8.0


def test_the_reconnect_pause_doubles_from_a_quarter_second_to_eight() -> None:
    assert [waiter_module.reconnect_pause(n) for n in range(1, 8)] == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
