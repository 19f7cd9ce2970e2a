"""How often and how fast the Supervisor restarts a plugin, and what it reports about it."""

from __future__ import annotations

import collections
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from plugbay.core.resilience.calls import backoff_delay, checked_backoff, number_problem, seconds_problem
from plugbay.errors import ConfigError, RestartBudgetExhaustedError

_log = logging.getLogger("plugbay.supervisor")
_WARNINGS = ("failure", "start_failed", "restart_failed", "gave_up")


@dataclass(frozen=True)
class RestartPolicy:
    """At most ``max_restarts`` restarts within any ``window`` seconds; backoff between tries.

    The backoff grows with each failure in a row (``initial_backoff`` x ``multiplier`` per
    failure, capped at ``max_backoff``), across restarts: a plugin that starts and soon fails
    again waits longer each time. It starts over from ``initial_backoff`` once a plugin has run
    for ``stable_after`` seconds (None: ``max_backoff``, at least 10 s) before it failed.
    """

    max_restarts: int = 5
    window: float = 60.0
    initial_backoff: float = 0.2
    max_backoff: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.2
    stable_after: float | None = None

    def __post_init__(self) -> None:
        problems = [p for p in (
            number_problem(self.max_restarts, "max_restarts", 0, whole=True),
            number_problem(self.window, "window", 0, above=True),
            seconds_problem(self.initial_backoff, "initial_backoff", above=False),
            seconds_problem(self.max_backoff, "max_backoff", above=False),
            number_problem(self.multiplier, "multiplier", 1, finite=True),
            number_problem(self.jitter, "jitter", 0, maximum=1),
            None if self.stable_after is None else number_problem(self.stable_after, "stable_after (or None)", 0),
        ) if p is not None]
        if problems:
            raise ConfigError(f"invalid RestartPolicy: {'; '.join(problems)}")

    def backoff(self, consecutive: int) -> float:
        return backoff_delay(self.initial_backoff, self.multiplier, self.max_backoff, self.jitter,
                             consecutive, random.random)

    def stable_seconds(self) -> float:
        """How long a plugin must run before its failure counts as the first in a row again."""
        return self.stable_after if self.stable_after is not None else max(10.0, self.max_backoff)


class FailureRun:
    """The failures in a row, which set each restart's backoff. A failure soon after a (re)start
    continues the run (a crash loop waits longer each time); one after the plugin ran for
    ``policy.stable_seconds()`` starts a new run."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.count = 0  # failed plugins and failed restarts since the run began
        self._up_since: float | None = None

    def running(self) -> None:
        """A plugin was (re)started and adopted."""
        self._up_since = self._clock()

    def failed(self, policy: RestartPolicy) -> None:
        """The running plugin failed."""
        up, self._up_since = self._up_since, None
        if up is not None and self._clock() - up >= policy.stable_seconds():
            self.count = 0

    def next_backoff(self, policy: RestartPolicy) -> float:
        """The wait before the next try to start it (a failed try counts as one more failure). A backoff
        no wait takes (a subclass's backoff() gave nan, a negative number, inf) is the policy's bug:
        ConfigError, and the Supervisor gives up saying so, as when backoff() raises."""
        self.count += 1
        return checked_backoff(policy.backoff(self.count), f"{type(policy).__name__}.backoff({self.count})")


# Literal, so that a type checker catches `event.kind == "restart"` (strict equality); an event is frozen, so
# narrowing its kind by a comparison is right (unlike a Supervisor's state)
EventKind: TypeAlias = Literal["started", "start_failed", "reattached", "reattach_failed", "failure", "recovered",
                               "restarting", "restarted", "restart_failed", "gave_up", "stopped"]


@dataclass(frozen=True)
class SupervisorEvent:
    """One thing that happened: kind is started, start_failed, reattached, reattach_failed, failure,
    recovered, restarting, restarted, restart_failed, gave_up or stopped."""

    kind: EventKind
    detail: str
    restarts: int
    at: float  # time.time()


class RestartLoopFailedError(RestartBudgetExhaustedError):
    """The Supervisor gave up because its own restart loop failed, not its budget: still a
    RestartBudgetExhaustedError, so that whatever handles a Supervisor that gave up handles this."""

    def __init__(self, name: str, restarts: int, window: float, last_failure: str, kind: str = "Supervisor") -> None:
        super().__init__(name, restarts, window, last_failure, kind)
        self.args = (f"the {kind} of plugin {name!r} stopped restarting it after {restarts} restart(s):"
                     f" {last_failure}. The log has the traceback; if the RestartPolicy is a subclass of your"
                     f" own, check its methods. Then make a new {kind}.",)


class CannotRestartError(RestartBudgetExhaustedError):
    """The plugin failed and its Supervisor, given reattach= and a ClientConfig without cmd=, has nothing to
    start in its place: it gave up at once, its budget untouched. Still a RestartBudgetExhaustedError, so
    that whatever handles a Supervisor that gave up handles this."""

    def __init__(self, name: str, restarts: int, window: float, last_failure: str, kind: str = "Supervisor") -> None:
        super().__init__(name, restarts, window, last_failure, kind)
        self.args = (f"plugin {name!r} failed ({last_failure}) and the {kind} did not restart it: it was given"
                     " reattach= and no cmd=, so it cannot start a new plugin to replace the one it reattached"
                     f" to: pass cmd= too (in a new {kind}: {kind}(ClientConfig(..., cmd=[...]), reattach=...))"
                     " to have it restarted.",)


class RestartBudget:
    """The restarts made within a policy's window (the oldest drop out as the window moves on), and
    once they were too many (or the restart loop failed), the error of a Supervisor that gave up."""

    def __init__(self) -> None:
        self._times: collections.deque[float] = collections.deque()
        self._fatal: RestartBudgetExhaustedError | None = None

    def spent(self, policy: RestartPolicy) -> bool:
        """Whether the policy allows no more restarts now; drops the restarts that left the window (the
        monitor's own call: left() only reads)."""
        now = time.monotonic()
        while self._times and now - self._times[0] > policy.window:
            self._times.popleft()
        return self.left(policy) <= 0

    def left(self, policy: RestartPolicy) -> int:
        """How many restarts the policy still allows now; reads, never changes, so any thread may ask."""
        now = time.monotonic()
        return policy.max_restarts - sum(1 for t in list(self._times) if now - t <= policy.window)

    def record(self) -> None:
        self._times.append(time.monotonic())

    def __len__(self) -> int:
        return len(self._times)

    def exhaust(self, name: str, window: float, last_failure: str, loop_failed: int | None = None,
                kind: str = "Supervisor", cannot_restart: bool = False) -> str:
        """Give up (raise_if_exhausted() raises from now on); says why. ``loop_failed``: the restart loop
        failed after that many restarts in all (the window's count would leave out the older ones);
        ``kind``: what the error calls the one that gave up (an AsyncSupervisor's is its own name);
        ``cannot_restart``: it has no way to start a plugin (CannotRestartError), whatever the budget."""
        if cannot_restart:
            self._fatal = CannotRestartError(name, len(self._times), window, last_failure, kind)
        elif loop_failed is not None:
            self._fatal = RestartLoopFailedError(name, loop_failed, window, last_failure, kind)
        else:
            self._fatal = RestartBudgetExhaustedError(name, len(self._times), window, last_failure, kind)
        return str(self._fatal)

    def raise_if_exhausted(self) -> None:
        """A new error each time: one shared object would gather every call's traceback frames and notes."""
        if (fatal := self._fatal) is not None:
            raise type(fatal)(fatal.name, fatal.restarts, fatal.window, fatal.last_failure, fatal.kind)


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
