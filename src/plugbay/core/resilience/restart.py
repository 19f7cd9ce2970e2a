"""How often and how fast the Supervisor restarts a plugin, and what it reports about it."""

from __future__ import annotations

import random
from dataclasses import dataclass

from plugbay.core.resilience.calls import backoff_delay
from plugbay.errors import ConfigError


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
        if self.max_restarts < 0 or self.window <= 0 or self.initial_backoff < 0 or self.multiplier < 1:
            raise ConfigError(f"invalid RestartPolicy {self}: max_restarts >= 0, window > 0,"
                              " initial_backoff >= 0 and multiplier >= 1 are required")

    def backoff(self, consecutive: int) -> float:
        return backoff_delay(self.initial_backoff, self.multiplier, self.max_backoff, self.jitter,
                             consecutive, random.random)


@dataclass(frozen=True)
class SupervisorEvent:
    """One thing that happened: kind is started, reattached, reattach_failed, failure, recovered,
    restarting, restarted, restart_failed, gave_up or stopped."""

    kind: str
    detail: str
    restarts: int
    at: float  # time.time()
