"""A sync call's failures, typed (plugbay.core.host.channel's ManagedChannel): judged within what is left
of the call's deadline; a stream whose request iterator raised raises that error, not grpcio's UNKNOWN
"Exception iterating requests!" (plugbay.core.transport.requestsource), as the caller's own code raised it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc

from plugbay.core.host.callerrors import CallTimeout, caused
from plugbay.core.transport.requestsource import RequestSource

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
    if isinstance(error, CallTimeout) and error.deadline is None:
        error.deadline = timeout
    return error


class TranslatingStream:
    """A streaming call whose iteration raises translated errors; the rest delegates."""

    def __init__(self, call: Any, owner: FailureJudge, started: float, timeout: float | None,
                 requests: RequestSource | None = None) -> None:
        self._call = call
        self._owner = owner
        self._started, self._timeout = started, timeout
        self._requests = requests  # a stream-stream call's request iterator, its error kept

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except grpc.RpcError as exc:
            if self._requests is None or not self._requests.ended(exc):
                raise caused(failed(self._owner, exc, self._started, self._timeout), exc)
        requests = self._requests  # holds the error no more once it hands it over
        assert requests is not None
        # out of the except block, so the error keeps its own context; never held in a local, which its
        # traceback (this frame) would hold in a cycle
        raise requests.take_error()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class TranslatingFuture:
    """A call future whose result() raises (and exception() returns) translated errors."""

    def __init__(self, future: Any, owner: FailureJudge, started: float, timeout: float | None,
                 requests: RequestSource | None = None) -> None:
        self._future = future
        self._owner = owner
        self._started, self._timeout = started, timeout
        self._requests = requests  # a stream-unary call's request iterator, its error kept
        self._own: BaseException | None = None  # that error, once taken: every result() raises it

    def result(self, timeout: float | None = None) -> Any:
        try:
            return self._future.result(timeout)
        except grpc.RpcError as exc:
            if self._own_error(exc) is None:
                raise caused(failed(self._owner, exc, self._started, self._timeout), exc)
        own = self._own  # the same error each time, as a future's
        assert own is not None
        try:
            raise own  # out of the except block, as TranslatingStream's
        finally:
            del own, self  # as concurrent.futures does: the error's traceback holds this frame, not the future

    def exception(self, timeout: float | None = None) -> BaseException | None:
        exc = self._future.exception(timeout)
        if isinstance(exc, grpc.RpcError):
            own = self._own_error(exc)
            return failed(self._owner, exc, self._started, self._timeout) if own is None else own
        return exc  # type: ignore[no-any-return]

    def _own_error(self, exc: grpc.RpcError | None) -> BaseException | None:
        """The request iterator's error, if ``exc`` is grpcio's for it (None: check nothing new), as a
        future's result() and exception() give the same error each time they are asked."""
        requests = self._requests
        if self._own is None and exc is not None and requests is not None:
            with requests.lock:  # the error path only: several threads may read the future at once
                if self._own is None and self._requests is requests:
                    if requests.ended(exc):
                        self._own = requests.take_error()
                    # either way the future's outcome is settled: an upstream's error, handed over as the
                    # UNKNOWN's cause, leaves every later result() that UNKNOWN (not the stream's later-read
                    # InvalidStateError)
                    self._requests = None
        return self._own

    def __getattr__(self, name: str) -> Any:
        return getattr(self._future, name)
