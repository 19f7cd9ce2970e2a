"""The call-layer seam shared by every resilience piece: the hook type, chaining, install().

A Client's ManagedChannel runs each unary-unary call through ``call_hook``;
resilience layers (RetryPolicy, CircuitBreaker, the Supervisor's ready gate)
are :class:`CallLayer` objects chained into that one hook. An AsyncClient's
channel has the same seam for coroutines: RetryPolicy and CircuitBreaker are
also :class:`AsyncCallLayer` objects, and install() takes either client.
"""

from __future__ import annotations

import contextvars
import math
import numbers
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, cast

import grpc

from plugbay.core.host.channel import ManagedChannel
from plugbay.errors import ConfigError, PlugbayError

Attempt = Callable[[float | None], Any]
AsyncAttempt = Callable[[float | None], Awaitable[Any]]


class CallLayer(Protocol):
    """One layer of the call hook: run ``attempt`` (maybe several times) within ``timeout``."""

    def run(self, method: str, attempt: Attempt, timeout: float | None) -> Any: ...


class AsyncCallLayer(Protocol):
    """A :class:`CallLayer` for an AsyncClient's calls: ``attempt`` and the layer are coroutines."""

    async def run_async(self, method: str, attempt: AsyncAttempt, timeout: float | None) -> Any: ...


def status_of(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC status of a (translated) call error, or None for other errors."""
    code = getattr(exc, "code", None)
    if callable(code):
        try:
            value = code()
        except Exception:
            return None
        return value if isinstance(value, grpc.StatusCode) else None
    return None


def describe_error(exc: BaseException) -> str:
    """One line for logs and messages: "CODE: details" for call errors, else the first line."""
    code = status_of(exc)
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    details = getattr(exc, "details", None)
    # plugbay's own errors (a translated call error) say more than grpc's details
    if code is not None and callable(details) and not isinstance(exc, PlugbayError):
        try:
            text = str(details())
        except Exception:
            pass
    return (f"{code.name}: {text}" if code is not None else text)[:300]


def backoff_delay(initial: float, multiplier: float, cap: float, jitter: float, n: int,
                  rand: Callable[[], float]) -> float:
    """The sleep before try ``n + 1`` (n >= 1): exponential from ``initial``, capped, jittered down.

    Each sleep is drawn from [(1 - jitter) * b, b], so callers that failed together do not
    retry (or restart) in step.
    """
    base = min(cap, initial)
    if n > 1 and multiplier > 1 and 0 < base < cap:
        # Growth stops at the cap: beyond it multiplier ** (n - 1) only overflows (a long run of failures).
        steps = (math.log(cap) - math.log(initial)) / math.log(multiplier)
        try:
            base = cap if steps < n - 1 else min(cap, initial * float(multiplier) ** (n - 1))
        except OverflowError:  # an infinite cap
            base = cap
    return base * (1 - jitter * rand())


# The end (time.monotonic()) of the Supervisor deadline() scope the call being run is made in, for its
# RetryPolicy: it sleeps no backoff past it. Set around a Supervisor's hook when its retry= is a RetryPolicy
# (calldeadline.scoped_hook) and taken once by that policy's call (take_scope_end), so nothing the call runs
# (on_retry, a breaker's on_change, another Client's call made there, a task started there) sees it.
# None: no scope, or one of no deadline.
SCOPE_END: contextvars.ContextVar[float | None] = contextvars.ContextVar("plugbay_scope_end", default=None)


def take_scope_end() -> float | None:
    """The end of the Supervisor deadline() scope the call being run is made in (None: none), cleared in this
    context as it is taken: only the outermost RetryPolicy of a Supervisor's own hook gets it. See SCOPE_END."""
    end = SCOPE_END.get()
    if end is not None:
        SCOPE_END.set(None)
    return end


def chain(layers: Iterable[CallLayer]) -> Callable[[str, Attempt, float | None], Any]:
    """One call hook from layers, outermost first (e.g. retry, then the circuit breaker)."""
    ordered = list(layers)

    def hook(method: str, attempt: Attempt, timeout: float | None) -> Any:
        def at(i: int, t: float | None) -> Any:
            if i == len(ordered):
                return attempt(t)
            return ordered[i].run(method, lambda t2: at(i + 1, t2), t)
        return at(0, timeout)

    return hook


def chain_async(layers: Iterable[AsyncCallLayer]) -> Callable[[str, AsyncAttempt, float | None], Awaitable[Any]]:
    """:func:`chain` for an AsyncClient's calls."""
    ordered = list(layers)

    async def hook(method: str, attempt: AsyncAttempt, timeout: float | None) -> Any:
        async def at(i: int, t: float | None) -> Any:
            if i == len(ordered):
                return await attempt(t)
            return await ordered[i].run_async(method, lambda t2: at(i + 1, t2), t)
        return await at(0, timeout)

    return hook


def install(target: Any, *, retry: CallLayer | AsyncCallLayer | None = None,
            breaker: CallLayer | AsyncCallLayer | None = None) -> None:
    """Apply ``retry`` and ``breaker`` to every unary call on a Client's (or ManagedChannel's) channel,
    or on a started AsyncClient's (or its AioManagedChannel's).

    Retry is the outer layer, so each attempt passes the breaker: an open
    breaker ends the retries at once with CircuitOpenError. Pass neither to remove.
    Layers are :class:`CallLayer` objects (and :class:`AsyncCallLayer` ones for an AsyncClient).
    A Supervisor takes them as its own retry= and breaker= (install() refuses it).
    """
    from plugbay.core.host.aiochannel import AioManagedChannel

    _refuse_supervised(target)
    if isinstance(target, (ManagedChannel, AioManagedChannel)):
        channel: Any = target
    else:
        try:
            channel = getattr(target, "channel", None)
        except PlugbayError as exc:  # an AsyncClient not started yet says so
            raise ConfigError(f"install() needs a started client: {exc}") from None
    if not isinstance(channel, (ManagedChannel, AioManagedChannel)):
        raise ConfigError(f"install() needs a started Client or AsyncClient, or a ManagedChannel, got"
                          f" {type(target).__name__}")
    layers = [x for x in (retry, breaker) if x is not None]
    wanted = "run_async" if isinstance(channel, AioManagedChannel) else "run"
    for layer in layers:
        problem = layer_problem(layer, wanted)
        if problem is not None:
            raise ConfigError(f"install(): {problem}")
    owner = getattr(target, "name", None)
    if breaker is not None and getattr(breaker, "name", None) == "plugin" and isinstance(owner, str) and owner:
        breaker.name = owner  # type: ignore[union-attr]  # the default name: its messages name this plugin
    if isinstance(channel, AioManagedChannel):
        channel.call_hook = chain_async(cast(list[AsyncCallLayer], layers)) if layers else None
    else:
        channel.call_hook = chain(cast(list[CallLayer], layers)) if layers else None


def _refuse_supervised(target: Any) -> None:
    """A Supervisor's channel has its ready gate as its hook: replacing that would make calls made
    during a restart fail at once instead of waiting for the new plugin. (They mark themselves
    ``ready_gated``: this module is below the Supervisor's.)"""
    from plugbay.core.host.aiochannel import AioManagedChannel

    managed = target._managed if isinstance(target, AioManagedChannel) else target
    if getattr(target, "ready_gated", False) or getattr(managed, "ready_gated", False):
        raise ConfigError("install() does not take a Supervisor, an AsyncSupervisor or their channels: pass"
                          " retry= and breaker= to the Supervisor itself, which keeps them outside its ready gate")


def layer_problem(layer: object, wanted: str) -> str | None:
    """What is wrong with ``layer`` as a call layer whose ``wanted`` method ("run" or "run_async")
    will be called (None: nothing)."""
    if callable(getattr(layer, wanted, None)):
        return None
    return (f"{type(layer).__name__} is not a call layer for this client (it has no {wanted}() method);"
            " pass a RetryPolicy, a CircuitBreaker or your own layer")


def number_problem(value: Any, name: str, minimum: float, *, above: bool = False, whole: bool = False,
                   maximum: float | None = None, finite: bool = False) -> str | None:
    """What is wrong with ``value`` as setting ``name`` (None: nothing), for the resilience
    layers' constructors: a str or bool where a number belongs, NaN, out of range, or (``finite``)
    an infinity."""
    # int or float only: the waits that use these refuse a Fraction or a Decimal
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or value != value:
        return f"{name} must be {'a whole number' if whole else 'a number'} (got {value!r})"
    try:
        number = float(value)
    except OverflowError:
        return f"{name} is too large (got {value!r})"
    bound = f"> {minimum:g}" if above else f">= {minimum:g}"
    if maximum is not None:
        bound += f" and <= {maximum:g}"
    if number < minimum or (above and number == minimum) or (maximum is not None and number > maximum):
        return f"{name} must be {bound} (got {value!r})"
    if finite and math.isinf(number):
        return f"{name} must be a finite number {bound} (got {value!r})"
    return None


# A longer wait is not a setting but a mistake: gRPC deadlines overflow some 7e9 s past the epoch
# (the call then fails at once as past its deadline), and threading's waits raise past TIMEOUT_MAX.
LONGEST_WAIT = 365 * 86400.0


def seconds_problem(value: Any, name: str, *, above: bool = True) -> str | None:
    """:func:`number_problem` for a duration: > 0 (>= 0 when not ``above``: a backoff, 0 for none),
    finite, at most a year (a longer wait raised OverflowError from the thread's wait, or waited for ever)."""
    problem = number_problem(value, name, 0, above=above)
    if problem is None and not value <= LONGEST_WAIT:
        return f"{name} must be at most {LONGEST_WAIT:g} s (a year; got {value!r})"
    return problem


def checked_backoff(value: Any, what: str) -> float:
    """``value``, the sleep a policy's backoff() returned, when it is one a wait takes: a number of
    seconds >= 0 of at most a year. Otherwise ConfigError naming ``what``: nan and a negative number
    waited not at all (a crash loop restarted at once), math.inf raised OverflowError from the wait."""
    problem = seconds_problem(value, what, above=False)
    if problem is not None:
        raise ConfigError(f"{problem}: a backoff() of your own must return the seconds to wait, a number >= 0"
                          " of at most a year")
    return float(value)


def wait_timeout(value: Any, what: str) -> float:
    """The ``timeout`` of a wait such as Supervisor.wait_running(): any real number of seconds
    (0 or less: look without waiting; math.inf: no bound). None, nan or a str: ConfigError (a
    str raised TypeError deep in the wait, and nan never ran out, so the wait never ended)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int too big for a float
            seconds = math.inf if value > 0 else -math.inf  # type: ignore[operator]
        except (TypeError, ValueError):
            seconds = math.nan
        if seconds == seconds:
            return seconds
    raise ConfigError(f"{what}: timeout must be a number of seconds, or math.inf to wait without a bound"
                      f" (got {type(value).__name__} {value!r})"[:300])


def wait_until(cond: threading.Condition, done: Callable[[], bool], timeout: float, tick: float,
               over: Callable[[], bool] = lambda: False) -> bool:
    """Wait on ``cond`` until ``done()`` (True), or ``timeout`` passed or ``over()`` says nothing
    will change any more (False). Both are called with ``cond`` held; ``over()`` may raise instead.
    Waits ``tick`` at most between looks: some changes come with no notify."""
    deadline = time.monotonic() + timeout
    with cond:
        while not done():
            remaining = deadline - time.monotonic()
            if over() or remaining <= 0:
                return False
            cond.wait(min(remaining, tick))
    return True


def status_codes_problem(codes: Any, name: str) -> str | None:
    """None when ``codes`` is a collection of grpc.StatusCode members (names such as "UNAVAILABLE"
    would silently never match)."""
    if isinstance(codes, (str, bytes, grpc.StatusCode)) or not isinstance(codes, Iterable):
        return f"{name} must be a set of grpc.StatusCode members, such as {{grpc.StatusCode.UNAVAILABLE}}"
    wrong = [c for c in codes if not isinstance(c, grpc.StatusCode)]
    if wrong:
        return (f"{name} holds {wrong[0]!r}, not a grpc.StatusCode: use grpc.StatusCode.{wrong[0]}"
                if isinstance(wrong[0], str) else f"{name} holds {wrong[0]!r}, not a grpc.StatusCode")
    return None

