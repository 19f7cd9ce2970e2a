"""A sync call's failures, typed (plugbay.core.host.channel's ManagedChannel): judged within what is left
of the call's deadline; a stream whose request iterator raised raises that error, not grpcio's UNKNOWN
"Exception iterating requests!" (plugbay.core.transport.requestsource), as the caller's own code raised it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import grpc

from plugbay.core.host.callerrors import CallTimeout
from plugbay.core.transport.requestsource import CapturedOutcome, CapturedReads, RequestSource

if TYPE_CHECKING:
    from plugbay.core.host.judging import FailureJudge


def failed(owner: FailureJudge, exc: grpc.RpcError, started: float, timeout: float | None) -> BaseException:
    """The typed error of a call begun at ``started`` (time.monotonic()) with ``timeout``: judged within
    what is left of its deadline (a wait for the plugin's exit to show must not outlast the call's)."""
    spent = time.monotonic() - started
    past = timeout is not None and spent >= timeout * 0.98
    return timed(owner.translate_within(exc, past, None if timeout is None else timeout - spent), timeout)


def timed(error: BaseException, timeout: float | None) -> BaseException:
    """``error``, a CallTimeout knowing the deadline its try had (what a RetryPolicy's message names)."""
    if isinstance(error, CallTimeout):
        reword = getattr(timeout, "scope_timed_out", None)  # a Supervisor's deadline() scope set it (calldeadline)
        if reword is not None:
            reword(error)
        if error.deadline is None:
            error.deadline = None if timeout is None else float(timeout)
    return error


class _Translated:
    """What a Client's stream and future share: grpcio's call, its errors translated (its request
    iterator's as it is); the rest delegates. Its fields are set here, not through the captured class's
    __init__: this is on every streaming call's and future's path."""

    _call: Any

    def __init__(self, call: Any, owner: FailureJudge, started: float, timeout: float | None,
                 requests: RequestSource | None = None) -> None:
        self._call = call
        self._requests = requests  # a stream-request call's iterator, its error kept (None: none to keep)
        self._owner = owner
        self._started, self._timeout = started, timeout

    def _failed(self, exc: grpc.RpcError) -> BaseException:
        return failed(self._owner, exc, self._started, self._timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class TranslatingStream(_Translated, CapturedReads):
    """A streaming call whose iteration raises translated errors (its request iterator's as it is: see
    CapturedReads)."""


class TranslatingFuture(_Translated, CapturedOutcome):
    """A call future whose result() raises (and exception() returns) translated errors (its request
    iterator's as it is, the same each time, its traceback() that error's and a done callback given this
    future: see CapturedOutcome)."""
