"""The Docker exit waiter: wait requests the engine breaks while the container runs are not an exit."""

from __future__ import annotations

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
