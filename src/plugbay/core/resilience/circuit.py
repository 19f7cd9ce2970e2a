"""A circuit breaker: stop calling a plugin that keeps failing, probe it, resume.

closed     calls pass; failures (gRPC codes in ``failure_codes``, timeouts, a dead
           plugin) are counted in a sliding ``window``; ``failure_threshold`` of
           them open the circuit.
open       calls fail at once with :class:`CircuitOpen` (a CircuitOpenError) for
           ``open_for`` seconds.
half_open  exactly one probe call passes; its success closes the circuit, its
           failure opens it again. Other calls meanwhile fail fast. A probe still
           in flight after ``open_for`` (a call with no deadline that hangs) no
           longer holds the slot: the next call is a probe, and the stale one's
           outcome is ignored (not for a probe ``allow()`` gave: ``record_*()``
           carry no ticket to tell two probes apart).

Application errors (NOT_FOUND, INVALID_ARGUMENT ...) prove the plugin answers,
so they count as successes. UNKNOWN is one too by default: it is what a go-plugin
Go plugin answers for any plain Go error ("key not found") and what a Python
handler's exception gives, so counting it would open the circuit of a healthy
plugin after a few such answers (pass ``failure_codes=DEFAULT_FAILURE_CODES |
{grpc.StatusCode.UNKNOWN}`` to count it). plugbay errors without a gRPC status (a Supervisor that
gave up or was stopped) say nothing of the plugin: they count as neither.
A HealthWatcher may ``trip()`` and ``reset()`` it.
Thread-safe; state changes are reported to ``on_change(old, new, reason)``.
"""

from __future__ import annotations

import collections
import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Final, Literal, TypeAlias

import grpc

from plugbay.errors import CircuitOpenError, ConfigError, PinnedEndpointGoneError, PlugbayError, PluginDiedError
from plugbay.core.resilience.calls import (AsyncAttempt, Attempt, describe_error, number_problem,
                                          seconds_problem, status_codes_problem, status_of)

_log = logging.getLogger("plugbay.circuit")

# The words of CircuitBreaker.state, and of on_change's old and new. The state property itself says str: a
# type checker narrows a property after `==` and keeps that across calls, so with this Literal
# `assert b.state == "closed"; b.trip("x"); assert b.state == "open"` was a false error (the rest unchecked).
CircuitState: TypeAlias = Literal["closed", "open", "half_open"]
CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"

_CALL = object()  # the ticket of a call let through while the circuit is closed

# Codes that say the plugin or the way to it is in trouble. Not UNKNOWN: an application error (see above),
# as outlier ejection in network mode treats it (plugbay.network.ejection).
DEFAULT_FAILURE_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.RESOURCE_EXHAUSTED,
})


class CircuitOpen(CircuitOpenError, grpc.RpcError):  # type: ignore[misc]
    """Raised instead of calling; ``retry_in`` seconds until a probe is let through.

    Also a grpc.RpcError (UNAVAILABLE: the call was not sent), as every call failure is.
    """

    def __init__(self, message: str, name: str, retry_in: float, last_failure: str) -> None:
        super().__init__(message)
        self.name = name
        self.retry_in = retry_in
        self.last_failure = last_failure

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return str(self)

    def __reduce__(self) -> tuple[Any, ...]:
        # BaseException's default calls the class with ``args`` alone, which __init__ refuses
        return type(self), (str(self), self.name, self.retry_in, self.last_failure), dict(self.__dict__)


class CircuitBreaker:
    """closed / open / half-open, one probe at a time. See the module docstring."""

    def __init__(self, failure_threshold: int = 5, window: float = 30.0, open_for: float = 10.0, *,
                 name: str = "plugin",
                 failure_codes: frozenset[grpc.StatusCode] = DEFAULT_FAILURE_CODES,
                 on_change: Callable[[CircuitState, CircuitState, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(failure_codes, Iterable) and not isinstance(failure_codes, (str, bytes)):
            try:
                failure_codes = frozenset(failure_codes)  # once: a generator is read here
            except TypeError:  # unhashable members: status_codes_problem below names them
                failure_codes = list(failure_codes)  # type: ignore[assignment]
        problems = [p for p in (
            number_problem(failure_threshold, "failure_threshold", 1, whole=True),
            # finite and at most a year: math.inf said "a probe call is let through in 0.0s", and
            # 1e12 raised OverflowError from the refusal's own message (the time it names)
            seconds_problem(window, "window"),
            seconds_problem(open_for, "open_for"),
            status_codes_problem(failure_codes, "failure_codes"),
            None if on_change is None or callable(on_change) else "on_change must be a callable or None",
        ) if p is not None]
        if problems:
            raise ConfigError("invalid CircuitBreaker: " + "; ".join(problems))
        self.failure_threshold = failure_threshold
        self.window = window
        self.open_for = open_for
        self.name = name
        self.failure_codes = frozenset(failure_codes)
        self.on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._state: CircuitState = CLOSED
        self._failures: collections.deque[float] = collections.deque()
        self._opened_at = 0.0
        self._probe: object | None = None  # the ticket of the half-open circuit's one probe in flight
        self._probe_at = 0.0  # when it was let through
        self._probe_expires = True  # False: allow() gave it, and only record_*() will end it
        self._last_failure = ""
        self._pending: list[tuple[CircuitState, CircuitState, str]] = []
        self.opened_count = 0  # how often it opened (metrics)
        self.rejected_count = 0  # calls refused while open

    # --- state ----------------------------------------------------------------

    @property
    def state(self) -> str:  # a CircuitState; str, so a check after a call is not narrowed by one before it
        with self._lock:
            state = self._current()
        self._notify()  # reading it may be what moved it open -> half_open
        return state

    @property
    def last_failure(self) -> str:
        return self._last_failure

    def _current(self) -> CircuitState:
        if self._state == OPEN and self._clock() - self._opened_at >= self.open_for:
            self._move(HALF_OPEN, "open interval over; the next call is a probe")
        return self._state

    def _probe_left(self) -> float:
        """Seconds until the probe in flight stops holding the half-open slot (with the lock held)."""
        return self.open_for - (self._clock() - self._probe_at) if self._probe_expires else float("inf")

    def _move(self, new: CircuitState, reason: str) -> None:
        # called with the lock held; callbacks run outside it (see _notify)
        old, self._state = self._state, new
        if new == OPEN:
            self._opened_at = self._clock()
            self._probe = None
            self.opened_count += 1
        if new == CLOSED:
            self._failures.clear()
            self._probe = None
        if old != new:
            self._pending.append((old, new, reason))

    def _notify(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for old, new, reason in pending:
            _log.info("circuit of plugin %s: %s -> %s (%s)", self.name, old, new, reason)
            if self.on_change is not None:
                try:
                    self.on_change(old, new, reason)
                except Exception:
                    _log.exception("circuit on_change callback failed")

    # --- the protocol -----------------------------------------------------------

    def allow(self) -> bool:
        """Take permission for one call; False when it must fail fast."""
        # its caller reports with record_*(), which carry no ticket: a probe it was given never
        # expires, as a second one's report could not be told from the first's
        return self._admit(expires=False) is not None

    def _admit(self, expires: bool = True) -> object | None:
        """Permission for one call, as a ticket: the probe's own while half-open, _CALL while
        closed; None when the call must fail fast."""
        ticket: object | None = None
        with self._lock:
            state = self._current()
            if state == CLOSED:
                ticket = _CALL
            elif state == HALF_OPEN and (self._probe is None or self._probe_left() <= 0):
                ticket = self._probe = object()
                self._probe_at, self._probe_expires = self._clock(), expires
            if ticket is None:
                self.rejected_count += 1
        self._notify()
        return ticket

    def record_success(self) -> None:
        with self._lock:
            self._succeeded()
        self._notify()

    def record_failure(self, reason: str) -> None:
        with self._lock:
            self._failed(reason)
        self._notify()

    def _succeeded(self) -> None:  # with the lock held
        if self._state == HALF_OPEN:
            self._move(CLOSED, "the probe call succeeded")

    def _failed(self, reason: str) -> None:  # with the lock held
        now = self._clock()
        self._last_failure = reason
        if self._state == HALF_OPEN:
            self._move(OPEN, f"the probe call failed: {reason}")
        elif self._state == CLOSED:
            self._failures.append(now)
            while self._failures and now - self._failures[0] > self.window:
                self._failures.popleft()
            if len(self._failures) >= self.failure_threshold:
                self._move(OPEN, f"{len(self._failures)} failures within {self.window:g}s,"
                                 f" last: {reason}")

    def _outcome(self, ticket: object, failure: str | None) -> None:
        """A call's outcome (``failure``: why it failed; None: it succeeded). While half-open only
        the current probe's moves the circuit: a call let through before it brings older news."""
        with self._lock:
            if self._state == HALF_OPEN and ticket is not self._probe:
                if failure is not None:
                    self._last_failure = failure
            elif failure is None:
                self._succeeded()
            else:
                self._failed(failure)
        self._notify()

    def _release(self, ticket: object) -> None:
        """An interrupted call (a cancel, on asyncio): the probe slot is freed if it held it."""
        with self._lock:
            if ticket is self._probe:
                self._probe = None

    def trip(self, reason: str) -> None:
        """Open now (e.g. the health watcher saw the plugin stop serving)."""
        with self._lock:
            self._last_failure = reason
            if self._state != OPEN:
                self._move(OPEN, reason)
            else:
                self._opened_at = self._clock()
        self._notify()

    def reset(self, reason: str = "reset") -> None:
        """Close now (e.g. the health watcher saw the plugin serving again)."""
        with self._lock:
            self._move(CLOSED, reason)
        self._notify()

    def is_failure(self, exc: BaseException) -> bool:
        if isinstance(exc, PinnedEndpointGoneError):
            return False  # a stale stub's replica, not the plugin's state (see _settle)
        if isinstance(exc, PluginDiedError):
            return True
        code = status_of(exc)
        return code is not None and code in self.failure_codes

    def open_error(self) -> CircuitOpen:
        with self._lock:
            state = self._current()
            left = self._probe_left() if state == HALF_OPEN else self.open_for - (self._clock() - self._opened_at)
            last = self._last_failure or "unknown"
        self._notify()
        retry_in = max(0.0, left) if left != float("inf") else 0.0  # allow()'s probe: when it reports
        if state == HALF_OPEN:
            when = "a probe call is already in flight; retry when it completes" + (
                f" (at the latest in {retry_in:.1f}s)" if left != float("inf") else "")
        else:
            at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=retry_in)
            when = f"a probe call is let through in {retry_in:.1f}s (at {at:%H:%M:%S} UTC)"
        return CircuitOpen(
            f"circuit of plugin {self.name!r} is open, so the call was not sent: {when}. Last"
            f" failure: {last}. Check that the plugin is running and reachable (its logs, its"
            " host, the network); breaker.reset() closes the circuit by hand.",
            self.name, retry_in, last)

    def run(self, method: str, attempt: Attempt, timeout: float | None) -> Any:
        """The call-hook layer: refuse, or call and record the outcome."""
        ticket = self._admit()
        if ticket is None:
            raise self.open_error()
        try:
            result = attempt(timeout)
        except Exception as exc:
            self._settle(ticket, method, exc)
            raise
        except BaseException:  # interrupted: the probe slot must not stay taken
            self._release(ticket)
            raise
        self._outcome(ticket, None)
        return result

    async def run_async(self, method: str, attempt: AsyncAttempt, timeout: float | None) -> Any:
        """:meth:`run` for an AsyncClient's calls (a cancelled call, like an interrupted one, records nothing)."""
        ticket = self._admit()
        if ticket is None:
            raise self.open_error()
        try:
            result = await attempt(timeout)
        except Exception as exc:
            self._settle(ticket, method, exc)
            raise
        except BaseException:  # a cancel
            self._release(ticket)
            raise
        self._outcome(ticket, None)
        return result

    def _settle(self, ticket: object, method: str, exc: Exception) -> None:
        if isinstance(exc, PinnedEndpointGoneError) or (
                isinstance(exc, PlugbayError) and not isinstance(exc, PluginDiedError) and status_of(exc) is None):
            # No plugin answered or failed to (a Supervisor that gave up or was stopped; a stub pinned to a
            # replica that is gone, refused before it was sent, UNAVAILABLE though it is): no news of the
            # replicas calls go to, so neither a success that closes the circuit nor a failure (a few stale
            # stubs opened it for every replica); a probe frees its slot.
            self._release(ticket)
        else:
            self._outcome(ticket, self._failure(method, exc))

    def _failure(self, method: str, exc: Exception) -> str | None:
        """What a failed call counts as: why it failed, or None (an application error proves the plugin answers)."""
        return f"{method}: {describe_error(exc)}" if self.is_failure(exc) else None
