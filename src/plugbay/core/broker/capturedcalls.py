"""A brokered channel's request streams, captured (plugbay.core.transport.requestsource), so a stream whose
request iterator raises fails with that error, as a Client's calls do, not grpcio's UNKNOWN "Exception
iterating requests!" (the error itself logged and lost).

Only the stream-request methods are wrapped; the user's stubs stay theirs. What a call returns keeps
grpcio's public kinds: a stream is an iterator, a grpc.Call and a grpc.Future, as grpcio's own call object
is (its private class aside); success is grpcio's own answer, untouched. The plugin process uses these too
(its callbacks into the host), so nothing here reaches into the host's code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from plugbay.core.transport.requestsource import RequestSource, capture


class CapturedStreamUnary(grpc.StreamUnaryMultiCallable):  # type: ignore[misc]
    """grpcio's stream-unary method, its request iterator's error raised as the call's."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __call__(self, request_iterator: Any, *args: Any, **kwargs: Any) -> Any:
        return _called(self._inner, request_iterator, args, kwargs)

    def with_call(self, request_iterator: Any, *args: Any, **kwargs: Any) -> Any:
        return _called(self._inner.with_call, request_iterator, args, kwargs)

    def future(self, request_iterator: Any, *args: Any, **kwargs: Any) -> Any:
        requests, source = capture(request_iterator)
        call = self._inner.future(requests, *args, **kwargs)
        return call if source is None else CapturedCall(call, source)


class CapturedStreamStream(grpc.StreamStreamMultiCallable):  # type: ignore[misc]
    """grpcio's stream-stream method, its request iterator's error raised by the read that finds it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __call__(self, request_iterator: Any, *args: Any, **kwargs: Any) -> Any:
        requests, source = capture(request_iterator)
        call = self._inner(requests, *args, **kwargs)
        return call if source is None else CapturedCall(call, source)


def _called(method: Callable[..., Any], request_iterator: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    requests, source = capture(request_iterator)
    try:
        return method(requests, *args, **kwargs)
    except grpc.RpcError as exc:
        if source is None or not source.ended(exc):
            raise
    # out of the except block, so the error keeps its own context; never held in a local, which its
    # traceback (this frame) would hold in a cycle
    raise source.take_error()


class CapturedCall(grpc.Call, grpc.Future):  # type: ignore[misc]
    """grpcio's call object (a stream, or a stream-unary future): its reads, result() and exception() give
    the request iterator's error where grpcio has its own UNKNOWN for it; the rest is grpcio's. A later
    read of a stream gets the InvalidStateError naming the error; a future's every result() the same one."""

    def __init__(self, call: Any, requests: RequestSource) -> None:
        self._call = call
        self._requests: RequestSource | None = requests
        self._own: BaseException | None = None  # a future's: the iterator's error, once taken

    # --- a stream's reads ---------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except grpc.RpcError as exc:
            if self._requests is None or not self._requests.ended(exc):
                raise
        requests = self._requests
        assert requests is not None
        raise requests.take_error()  # as in _called

    # --- a future's outcome -------------------------------------------------------

    def result(self, timeout: float | None = None) -> Any:
        try:
            return self._call.result(timeout)
        except grpc.RpcError as exc:
            if self._own_error(exc) is None:
                raise
        own = self._own
        assert own is not None
        try:
            raise own
        finally:
            del own, self  # as concurrent.futures does: the error's traceback holds this frame, not the call

    def exception(self, timeout: float | None = None) -> Any:
        exc = self._call.exception(timeout)
        own = self._own_error(exc) if isinstance(exc, grpc.RpcError) else None
        return exc if own is None else own

    def traceback(self, timeout: float | None = None) -> Any:
        exc = self._call.exception(timeout)
        own = self._own_error(exc) if isinstance(exc, grpc.RpcError) else None
        return self._call.traceback(timeout) if own is None else own.__traceback__

    def _own_error(self, exc: grpc.RpcError) -> BaseException | None:
        """The iterator's error when ``exc`` is grpcio's for it, the same each time (host.translating's
        TranslatingFuture does the same for a Client's calls)."""
        requests = self._requests
        if self._own is None and requests is not None:
            with requests.lock:  # several threads may read one future
                if self._own is None and self._requests is requests:
                    if requests.ended(exc):
                        self._own = requests.take_error()
                    self._requests = None  # the outcome is settled either way
        return self._own

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._call.add_done_callback(lambda _: fn(self))  # the callback gets what the caller holds

    # --- grpcio's own, as they are ---------------------------------------------------

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
