"""The call-layer seam shared by every resilience piece: the hook type, chaining, install().

A Client's ManagedChannel runs each unary-unary call through ``call_hook``;
resilience layers (RetryPolicy, CircuitBreaker, the Supervisor's ready gate)
are :class:`CallLayer` objects chained into that one hook.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import grpc

from plugbay.core.host.channel import ManagedChannel
from plugbay.errors import ConfigError, PlugbayError

Attempt = Callable[[float | None], Any]


class CallLayer(Protocol):
    """One layer of the call hook: run ``attempt`` (maybe several times) within ``timeout``."""

    def run(self, method: str, attempt: Attempt, timeout: float | None) -> Any: ...


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
    base = min(cap, initial * multiplier ** max(0, n - 1))
    return base * (1 - jitter * rand())


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


def install(target: Any, *, retry: CallLayer | None = None, breaker: CallLayer | None = None) -> None:
    """Apply ``retry`` and ``breaker`` to every unary call on a Client's (or ManagedChannel's) channel.

    Retry is the outer layer, so each attempt passes the breaker: an open
    breaker ends the retries at once with CircuitOpenError. Pass neither to remove.
    """
    channel = target if isinstance(target, ManagedChannel) else getattr(target, "channel", None)
    if not isinstance(channel, ManagedChannel):
        raise ConfigError(f"install() needs a started Client or a ManagedChannel, got {type(target).__name__}"
                          " (an AsyncClient's calls have no retry or breaker layers yet)")
    owner = getattr(target, "name", None)
    if breaker is not None and getattr(breaker, "name", None) == "plugin" and isinstance(owner, str) and owner:
        breaker.name = owner  # type: ignore[attr-defined]  # the default name: its messages name this plugin
    layers: list[CallLayer] = [x for x in (retry, breaker) if x is not None]
    channel.call_hook = chain(layers) if layers else None


def number_problem(value: Any, name: str, minimum: float, *, above: bool = False, whole: bool = False,
                   maximum: float | None = None) -> str | None:
    """What is wrong with ``value`` as setting ``name`` (None: nothing), for the resilience
    layers' constructors: a str or bool where a number belongs, NaN, or out of range."""
    # int or float only: the waits that use these refuse a Fraction or a Decimal
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or value != value:
        return f"{name} must be {'a whole number' if whole else 'a number'} (got {value!r})"
    try:
        number = float(value)
    except OverflowError:
        return f"{name} is too large (got {value!r})"
    if number < minimum or (above and number == minimum) or (maximum is not None and number > maximum):
        bound = f"> {minimum:g}" if above else f">= {minimum:g}"
        if maximum is not None:
            bound += f" and <= {maximum:g}"
        return f"{name} must be {bound} (got {value!r})"
    return None


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

