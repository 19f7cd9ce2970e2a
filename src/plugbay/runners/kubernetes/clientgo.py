"""The kubernetes client's client-go retry mode (``Configuration.client_go_retries``, off by default),
bounded as urllib3's retries are (deadline.py).

Its REST client asks again after a 429 or 5xx with a Retry-After through kubernetes.utils.retry's
``on_retry_after_error``, which time.sleeps max(its ``client_go_retry_backoff``, the Retry-After) outside
urllib3: past a bounded call's limit and its Cancel. And it reads a Retry-After as float(int(value)),
an OverflowError for one past any float (10**400), a ValueError for one of over 4300 digits.
:func:`install_client_go` wraps both where the REST client looks them up: within a bounded call the
waits end with the call's Deadline or its Cancel, a Retry-After past any float is one no call waits out
(the typed "answered" error), and one the client cannot read is said so (typed); outside one, or when a
caller passes its own sleep, the client's own functions run unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from plugbay.errors import EngineUnavailableError
from plugbay.runners.kubernetes.advice import digits_seconds, seconds_text

# deadline.py's, passed in by its install() (this module imports nothing of it: no import circle): the
# calling thread's bounded call (None: unbounded), and its wait before asking again
Current = Callable[[], Any]
Wait = Callable[..., None]
_PLAIN = "_plugbay_plain"  # on a wrapper: the client's own function


def _retry_after(error: Any) -> float | None:
    """The client's reading of ``error``'s Retry-After (seconds, or None); where its float(int(value)) fails
    (past any float, or over int()'s 4300 digits), the digits read here (math.inf past any float)."""
    from kubernetes.utils import retry

    try:
        seconds: float | None = getattr(retry, "retry_after_seconds")(error)
    except (OverflowError, ValueError):
        return digits_seconds(_header(error))
    return seconds


def _waits(original: Any, current: Current, wait_to_ask_again: Wait) -> Any:
    """``on_retry_after_error`` whose waits within a bounded call go through its Deadline."""

    def on_retry_after_error(backoff: Any, retriable: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if current() is None or args or kwargs:  # unbounded, or a caller's own sleep: as the client does
            return original(backoff, retriable, fn, *args, **kwargs)
        last: list[Any] = [None]

        def seen(error: Exception) -> bool:
            last[0] = error
            return bool(retriable(error))

        def sleep(seconds: float) -> None:  # the client waits max(its backoff, the Retry-After)
            wait_to_ask_again(seconds, getattr(last[0], "status", None), asked=_retry_after(last[0]) == seconds,
                              waiter="client_go")

        try:
            return original(backoff, seen, fn, sleep)
        except (OverflowError, ValueError) as exc:  # the client could not read a Retry-After's digits
            seconds = None if last[0] is None else _retry_after(last[0])
            if seconds is None:
                raise
            if seconds == math.inf:
                sleep(seconds)  # past any float: the wait ends with the call (raises)
            status = getattr(last[0], "status", None)
            raise EngineUnavailableError(  # a wait that may fit, but the client gave up reading it: no ask again
                f"the Kubernetes API answered {status} with a Retry-After of {seconds_text(seconds)} written in"
                f" {len(str(_header(last[0])).strip())} digits, which the kubernetes client's client-go retry mode"
                " cannot read; check the API server and any proxy in front of it, or turn that mode off"
                " (Configuration.client_go_retries)") from exc

    setattr(on_retry_after_error, _PLAIN, original)
    return on_retry_after_error


def _header(error: Any) -> Any:
    headers = getattr(error, "headers", None) or {}
    return next((value for key, value in headers.items() if key.lower() == "retry-after"), "")


def _tests(original: Any, current: Current) -> Any:
    """``is_retry_after_response`` that, within a bounded call, takes a Retry-After past any float for
    one (the client's raises OverflowError before it closes the answer): _waits then ends the call."""

    def is_retry_after_response(error: Exception) -> bool:
        try:
            return bool(original(error))
        except (OverflowError, ValueError):  # digits it cannot read (see _retry_after)
            if current() is None:
                raise
            return True

    setattr(is_retry_after_response, _PLAIN, original)
    return is_retry_after_response


def install_client_go(current: Current, wait_to_ask_again: Wait) -> None:
    """Bound the client-go mode's waits, once, where its REST client looks them up; a client without that
    mode is left alone. Call with deadline's install lock held."""
    try:
        from kubernetes.client import rest
    except ImportError:
        return
    wraps: dict[str, Callable[[Any], Any]] = {
        "on_retry_after_error": lambda original: _waits(original, current, wait_to_ask_again),
        "is_retry_after_response": lambda original: _tests(original, current)}
    for name, wrap in wraps.items():
        original = getattr(rest, name, None)
        if callable(original) and not hasattr(original, _PLAIN):
            setattr(rest, name, wrap(original))
