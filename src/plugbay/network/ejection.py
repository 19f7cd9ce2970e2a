"""Envoy-like outlier ejection: endpoints that keep failing are taken out for a while.

``consecutive_failures`` failed calls in a row (transport failures and
deadlines, never application errors such as NOT_FOUND or UNKNOWN, nor a busy
endpoint's RESOURCE_EXHAUSTED) eject an endpoint for
``base_ejection_time`` x its number of ejections, capped at
``max_ejection_time``. At most ``max_ejection_percent`` of the known endpoints
are ejected at once (at least one may always be, unless the percentage is 0).
When the time is up the endpoint returns; each ``base_ejection_time`` it stays
in without being ejected again lowers its multiplier by one, as Envoy does.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from plugbay.errors import ConfigError
from plugbay.network.figures import check_count, check_percent, check_seconds

# Failures that say something about the endpoint rather than about the request. Not UNKNOWN: it is
# what a go-plugin Go plugin answers for any plain Go error ("key not found") and what a Python
# handler's exception gives, so five such answers would eject a healthy replica. A status a handler passes
# through from a call of its own (its nested call's UNAVAILABLE or DEADLINE_EXCEEDED: grpc-go's and
# plugbay's plugins do) is the handler's answer too: a plugbay plugin marks it (core/protocol/handlerstatus.py)
# and the pool does not count it; a Go plugin's is counted, unmarked. Not RESOURCE_EXHAUSTED:
# it is a healthy endpoint saying it is busy (a plugin's handler gate at ServeConfig.max_workers, the
# gateway's max_calls) or that one message is too large; a burst of calls past the limit ejected the
# replica for base_ejection_time and shifted all its calls onto the others. Envoy's outlier detection
# does not count it either (gRPC maps it to HTTP 429, not a 5xx).
ENDPOINT_FAILURES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                               grpc.StatusCode.INTERNAL})


@dataclass(frozen=True)
class OutlierPolicy:
    """When to eject an endpoint and for how long. See the module docstring."""

    consecutive_failures: int = 5
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: float = 50

    def __post_init__(self) -> None:
        # typed and finite here: a NaN ejection time compares false with everything, so no endpoint would
        # ever be ejected (nor its multiplier decay), and a str failed with a bare TypeError
        try:
            # kept as int and float (a numpy scalar or a Fraction as given would fail the waits later);
            # max_ejection_time=math.inf is no cap
            for name, value in (
                    ("consecutive_failures", check_count(self.consecutive_failures, "consecutive_failures", 1)),
                    ("base_ejection_time", check_seconds(self.base_ejection_time, "base_ejection_time", 30.0)),
                    ("max_ejection_time", check_seconds(self.max_ejection_time, "max_ejection_time", 300.0,
                                                        endless=True)),
                    ("max_ejection_percent", check_percent(self.max_ejection_percent, "max_ejection_percent"))):
                object.__setattr__(self, name, value)
        except ConfigError as exc:
            raise ConfigError(f"invalid OutlierPolicy: {exc}") from None
        if self.max_ejection_time < self.base_ejection_time:
            raise ConfigError(f"invalid OutlierPolicy: max_ejection_time ({self.max_ejection_time!r}) is below"
                              f" base_ejection_time ({self.base_ejection_time!r}); pass a cap at least the base")

    def ejection_time(self, ejections: int) -> float:
        return min(self.base_ejection_time * max(ejections, 1), self.max_ejection_time)

    def may_eject(self, ejected: int, known: int) -> bool:
        if self.max_ejection_percent == 0 or known == 0:
            return False
        allowed = max(1, known * self.max_ejection_percent // 100)
        return ejected < allowed


class EjectionState:
    """One endpoint's outlier bookkeeping (the pool holds its lock while using it)."""

    def __init__(self) -> None:
        self.consecutive = 0
        self.multiplier = 0
        self.total = 0
        self.until: float | None = None
        self.last_change = 0.0

    def ejected(self, now: float) -> bool:
        return self.until is not None and now < self.until

    def success(self) -> None:
        self.consecutive = 0

    def failure(self) -> int:
        self.consecutive += 1
        return self.consecutive

    def eject(self, policy: OutlierPolicy, now: float) -> float:
        self.multiplier += 1
        self.total += 1
        self.consecutive = 0
        duration = policy.ejection_time(self.multiplier)
        self.until = now + duration
        self.last_change = now
        return duration

    def tick(self, policy: OutlierPolicy, now: float) -> bool:
        """Return True when an ejection just ended; decay the multiplier while healthy."""
        if self.until is not None:
            if now < self.until:
                return False
            self.until = None
            self.last_change = now
            return True
        if self.multiplier > 0 and now - self.last_change >= policy.base_ejection_time:
            self.multiplier -= 1
            self.last_change = now
        return False
