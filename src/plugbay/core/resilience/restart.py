"""How often and how fast the Supervisor restarts a plugin, and what it reports about it."""

from __future__ import annotations

import collections
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from plugbay.core.resilience.calls import backoff_delay, number_problem
from plugbay.errors import ConfigError

_log = logging.getLogger("plugbay.supervisor")
_WARNINGS = ("failure", "start_failed", "restart_failed", "gave_up")


@dataclass(frozen=True)
class RestartPolicy:
    """At most ``max_restarts`` restarts within any ``window`` seconds; backoff between tries."""

    max_restarts: int = 5
    window: float = 60.0
    initial_backoff: float = 0.2
    max_backoff: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        problems = [p for p in (
            number_problem(self.max_restarts, "max_restarts", 0, whole=True),
            number_problem(self.window, "window", 0, above=True),
            number_problem(self.initial_backoff, "initial_backoff", 0),
            number_problem(self.max_backoff, "max_backoff", 0),
            number_problem(self.multiplier, "multiplier", 1),
            number_problem(self.jitter, "jitter", 0, maximum=1),
        ) if p is not None]
        if problems:
            raise ConfigError(f"invalid RestartPolicy: {'; '.join(problems)}")

    def backoff(self, consecutive: int) -> float:
        return backoff_delay(self.initial_backoff, self.multiplier, self.max_backoff, self.jitter,
                             consecutive, random.random)


@dataclass(frozen=True)
class SupervisorEvent:
    """One thing that happened: kind is started, start_failed, reattached, reattach_failed, failure,
    recovered, restarting, restarted, restart_failed, gave_up or stopped."""

    kind: str
    detail: str
    restarts: int
    at: float  # time.time()


class RestartBudget:
    """The restarts made within a policy's window: the oldest drop out as the window moves on."""

    def __init__(self) -> None:
        self._times: collections.deque[float] = collections.deque()

    def spent(self, policy: RestartPolicy) -> bool:
        now = time.monotonic()
        while self._times and now - self._times[0] > policy.window:
            self._times.popleft()
        return len(self._times) >= policy.max_restarts

    def record(self) -> None:
        self._times.append(time.monotonic())

    def __len__(self) -> int:
        return len(self._times)


def record_event(events: collections.deque[SupervisorEvent], on_event: Callable[[SupervisorEvent], None] | None,
                 event: SupervisorEvent, name: str) -> None:
    """Keep ``event`` in ``events``, log it, and tell ``on_event`` (whose own failure is only logged)."""
    events.append(event)
    log = _log.warning if event.kind in _WARNINGS else _log.info
    log("supervisor of plugin %s: %s %s", name, event.kind, event.detail)
    if on_event is not None:
        try:
            on_event(event)
        except Exception:
            _log.exception("Supervisor on_event callback failed")
