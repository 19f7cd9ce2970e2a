"""A brokered channel's request streams, captured (plugbay.core.transport.requestsource), so a stream whose
request iterator raises fails with that error, as a Client's calls do, not grpcio's UNKNOWN "Exception
iterating requests!" (the error itself logged and lost).

Only the stream-request methods are wrapped; the user's stubs stay theirs. What a call returns keeps
grpcio's public kinds: a stream is an iterator, a grpc.Call and a grpc.Future, as grpcio's own call object
is (its private class aside); success is grpcio's own answer, untouched. A stream's error is met by its
reads; its future side (result(), exception(), a done callback) is grpcio's, as a Client's stream's is
(requestsource.CapturedReads says why). The plugin process uses these too
(its callbacks into the host), so nothing here reaches into the host's code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from plugbay.core.transport.requestsource import CapturedOutcome, CapturedReads, called, capture


class CapturedStreamUnary(grpc.StreamUnaryMultiCallable):  # type: ignore[misc]
    """grpcio's stream-unary method, its request iterator's error raised as the call's."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __call__(self, request_iterator: Any, *args: Any, **kwargs: Any) -> Any:
        return called(lambda requests: self._inner(requests, *args, **kwargs), request_iterator)

    def with_call(self, request_iterator: Any, *args: Any, **kwargs: Any) -> Any:
        return called(lambda requests: self._inner.with_call(requests, *args, **kwargs), request_iterator)

    def future(self, request_iterator: Any, *args: Any, **kwargs: Any) -> Any:
        requests, source = capture(request_iterator)
        call = self._inner.future(requests, *args, **kwargs)
        return call if source is None else CapturedFuture(call, source)


class CapturedStreamStream(grpc.StreamStreamMultiCallable):  # type: ignore[misc]
    """grpcio's stream-stream method, its request iterator's error raised by the read that finds it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __call__(self, request_iterator: Any, *args: Any, **kwargs: Any) -> Any:
        requests, source = capture(request_iterator)
        call = self._inner(requests, *args, **kwargs)
        return call if source is None else CapturedStream(call, source)


class _GrpcCall(grpc.Call, grpc.Future):  # type: ignore[misc]
    """grpcio's call object's public kinds (a grpc.Call, a grpc.Future), each method grpcio's own."""

    _call: Any

    def result(self, timeout: float | None = None) -> Any:
        return self._call.result(timeout)

    def exception(self, timeout: float | None = None) -> Any:
        return self._call.exception(timeout)

    def traceback(self, timeout: float | None = None) -> Any:
        return self._call.traceback(timeout)

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._call.add_done_callback(fn)

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def cancelled(self) -> bool:
        return bool(self._call.cancelled())

    def running(self) -> bool:
        return bool(self._call.running())

    def done(self) -> bool:
        return bool(self._call.done())

    def is_active(self) -> bool:
        return bool(self._call.is_active())

    def time_remaining(self) -> float | None:
        return self._call.time_remaining()  # type: ignore[no-any-return]

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return bool(self._call.add_callback(callback))

    def initial_metadata(self) -> Any:
        return self._call.initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._call.trailing_metadata()

    def code(self) -> grpc.StatusCode:
        return self._call.code()

    def details(self) -> str:
        return self._call.details()  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class CapturedStream(CapturedReads, _GrpcCall):
    """grpcio's stream-stream call: its reads raise the request iterator's error (a later read, the
    InvalidStateError naming it); its future side is grpcio's own, as a Client's stream's is."""


class CapturedFuture(CapturedOutcome, _GrpcCall):
    """grpcio's stream-unary future: result(), exception() and traceback() give the request iterator's error
    where grpcio has its own UNKNOWN for it, the same one each time; a done callback gets this future
    (CapturedOutcome's, as a Client's future's)."""
