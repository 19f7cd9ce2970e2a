"""A stream's request iterator, captured for the error it raises, so the caller gets that error.

grpc.aio reads a call's request iterator on a task of its own; an error there is logged at debug level
and the call is cancelled locally, so every read of the call raises asyncio.CancelledError: in a task
that nobody cancelled, a TaskGroup or asyncio.run takes that for a cancel, and the caller's own error
is lost. grpcio reads it on a thread of its own and fails the call with its own UNKNOWN "Exception
iterating requests!". The host's channels (the AsyncClient's, plugbay.core.host.aiocall; the Client's,
plugbay.core.host.translating) and a broker's (plugbay.core.broker.capturedcalls, on either side) raise
the iterator's error instead. Here, below the host, so a channel of any layer (a Supervisor's, a network
pool's, a plugin's brokered one) can tell a source already captured by an outer one.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from plugbay.core.protocol.handlerstatus import handler_status
from plugbay.core.transport.causes import caused

# grpcio's own details for a call it failed because its request iterator raised (its UNKNOWN, set locally)
ITERATING_FAILED = "Exception iterating requests!"
# the same, when the core's status for grpcio's local cancel arrived before grpcio set its own (about 1 in
# 1500 calls): the core's wording around grpcio's details
_ITERATING_REMOVED = f"Stream removed ({ITERATING_FAILED})"


def callers_own(error: BaseException | None) -> bool:
    """Whether a request iterator's error is the caller's own, raised as the call's error. One that is a
    grpc.RpcError is not (a host's server passing its incoming request stream on: the upstream call failed
    or its caller cancelled, and grpcio's server then raises a bare RpcError, no code()), nor an
    asyncio.CancelledError the iterator raised while nobody cancelled the task reading it (a grpc.aio call
    it reads from was cancelled or its channel closed: grpc.aio's reads raise that), nor (on the sync side)
    any other BaseException that is no Exception: the call keeps its own UNKNOWN ITERATING_FAILED, the
    iterator's error as its __cause__, on both sides. Raised as it is, that CancelledError would end the
    caller's task as a cancel nobody asked for (a TaskGroup takes it so)."""
    return error is None or isinstance(error, Exception) and not isinstance(error, grpc.RpcError)


class RequestSource:
    """A stream's request iterator, handed to gRPC as a generator that keeps what it raised: an async
    one for grpc.aio (watched()), a plain one for grpcio (iterated())."""

    def __init__(self, source: Any) -> None:
        self._source: Any = source
        self._error: BaseException | None = None
        self._call_error: BaseException | None = None  # the sync call's failure for it: the error's context
        self.failed: str | None = None  # what it raised, once that was handed to a read
        self._raised_by_earlier = "it"  # what that read raised: the error, or the call's own UNKNOWN for it
        # taken only on the error path: a future's result() may be asked on several threads at once (grpcio's
        # futures are meant to be), and each must find the error once, whole; a caller (CapturedOutcome)
        # holds it across its own check and take, so it is reentrant
        self.lock = threading.RLock()

    def watched(self) -> Watched:
        """What grpc.aio is given to read the requests from."""
        return Watched(self._watch())

    def iterated(self) -> Iterated:
        """What grpcio is given to read the requests from (on its own thread)."""
        return Iterated(self._iterate())

    async def _watch(self) -> AsyncIterator[Any]:
        source, self._source = self._source, None  # one use: the generator owns it now
        try:
            if isinstance(source, AsyncIterable):
                async for request in source:
                    yield request
            else:  # iterated on the loop, as grpc.aio iterates a plain iterator
                for request in source:
                    yield request
        except Exception as exc:  # a GeneratorExit or cancel (the call ended first) is not the caller's error
            self._error = exc
            del self  # the error's traceback holds this frame: no cycle back to the error through it
            raise
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is None or not task.cancelling():  # not grpc.aio's cancel of its reader (call.cancel()):
                self._error = exc  # raised by the source itself, an upstream call's end (callers_own)
            del self
            raise

    def _iterate(self) -> Iterator[Any]:
        source, self._source = self._source, None
        try:
            while True:  # next(), as grpcio calls it: an iterable that is no iterator fails as it did there
                try:
                    request = next(source)
                except StopIteration:
                    return
                yield request
        except Exception as exc:  # as in _watch
            self._error = exc
            del self
            raise
        except GeneratorExit:
            raise  # the generator closed: the call ended first
        except BaseException as exc:
            # grpcio's reader catches Exception only: another error (an asyncio.CancelledError from a grpc.aio
            # call the source reads; a SystemExit or KeyboardInterrupt, which on grpcio's reader thread end only
            # that thread) ended its thread, and the call waited out its deadline. As an Exception the call ends
            # at once, with grpcio's UNKNOWN; kept as an upstream's error (callers_own), its cause
            self._error = exc
            del self
            raise _Ended(f"the request iterator raised {_named(exc)}") from exc

    def raised(self) -> bool:
        """Whether the iterator raised (take_error() has an error to give)."""
        return self._error is not None or self.failed is not None

    def ended(self, exc: grpc.RpcError) -> bool:
        """Whether ``exc``, a sync call's failure, is grpcio's for this iterator's error (then take_error()
        gives that error, ``exc`` its context unless it has one of its own; or, once a read raised it, the
        InvalidStateError naming it). A plugin's own answer with those details (one it passed on from a call
        of its own, marked so) is not. An iterator's error that is not the caller's own (callers_own: an
        upstream call's) is not this call's failure: ``exc`` stays the error, the iterator's as its
        __cause__; a later read of the call gets the InvalidStateError naming it, as on the asyncio side
        (grpc.aio's reads of such a call raise CancelledError, never its status again)."""
        if (exc.code() != grpc.StatusCode.UNKNOWN or exc.details() not in (ITERATING_FAILED, _ITERATING_REMOVED)
                or handler_status(exc)):
            return False
        with self.lock:
            if not callers_own(self._error):
                exc.__cause__ = self._take_upstream()  # handed over, as take_error() does
                return False
            if self._error is None:
                return self.failed is not None
            self._call_error = exc
            return True

    def take_upstream(self) -> BaseException | None:
        """The iterator's error when it is not the caller's own (callers_own()), handed over: the async
        call then fails with its own UNKNOWN, as grpcio fails a sync one, this error its __cause__; else
        None (take_error() gives the error). A later read gets the InvalidStateError naming it."""
        with self.lock:
            if self._error is None or callers_own(self._error):
                return None
            return self._take_upstream()

    def _take_upstream(self) -> BaseException | None:
        """The upstream error, handed over (the lock held); a later read (either side) gets the
        InvalidStateError naming it, not the call's UNKNOWN again."""
        error, self._error = self._error, None
        if error is not None:
            self.failed = _named(error)
            self._raised_by_earlier = f"the call's own UNKNOWN {ITERATING_FAILED!r}, caused by it"
        return error

    def take_error(self) -> BaseException:
        """What the iterator raised, for the first read that fails; later ones get an InvalidStateError
        naming it. Handed over, not kept: raised through the call's frames, it would hold them (and the
        call) in a cycle until a full garbage collection."""
        with self.lock:
            error, self._error = self._error, None
            call_error, self._call_error = self._call_error, None
            if error is not None:
                self.failed = _named(error)
                if call_error is not None and error.__context__ is None:
                    error.__context__ = call_error  # raised outside the except: its own context is kept
                return error
        return asyncio.InvalidStateError(f"the call ended when its request iterator raised {self.failed}"
                                         f" (an earlier read raised {self._raised_by_earlier})")


class _Ended(Exception):
    """What grpcio's request reader meets for an iterator's error that is no Exception (it catches only those)."""


def _named(error: BaseException) -> str:
    """An error in one line: a grpc.aio error's str() is a multi-line repr, a bare grpc.RpcError's empty."""
    code, details = getattr(error, "code", None), getattr(error, "details", None)
    if isinstance(error, grpc.RpcError) and callable(code) and callable(details):
        return f"{type(error).__name__}: {code()} {details()!r}"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def capture(request: Any) -> tuple[Any, RequestSource | None]:
    """A sync stream's requests as grpcio is to get them, and their source (None: a channel over this one
    captured them already, and its call raises their error; each capturing would hold the outer one's
    copy in a cycle)."""
    if request is None or isinstance(request, Iterated):
        return request, None
    source = RequestSource(request)
    return source.iterated(), source


class Watched:
    """A request stream already watched: a channel under another one (an AsyncSupervisor's, an
    AsyncRemoteClient's pinned one) passes it on as it is, so the outer call, which the caller reads,
    is the one that raises the iterator's error (each watching it would leave the outer one's copy
    held in a cycle). Holds the generator only, not its RequestSource (see RequestSource._watch)."""

    __slots__ = ("_requests",)

    def __init__(self, requests: AsyncIterator[Any]) -> None:
        self._requests = requests

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._requests


class Iterated:
    """Watched's sync twin: a request stream already captured, which grpcio reads with next()."""

    __slots__ = ("_requests",)

    def __init__(self, requests: Iterator[Any]) -> None:
        self._requests = requests

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return next(self._requests)


def called(send: Callable[[Any], Any], request: Any,
           failed: Callable[[Exception], BaseException] | None = None) -> Any:
    """A blocking stream-request call (grpcio's call or with_call()): ``send`` is given ``request`` captured;
    the request iterator's error is raised as the call's, grpcio's own errors (its RpcError; the ValueError
    of a call on a closed channel) as ``failed`` gives them (None: as they are). The Client's calls
    (plugbay.core.host.channel) and a broker's (plugbay.core.broker.capturedcalls) are made so."""
    requests, source = capture(request)
    try:
        return send(requests)
    except grpc.RpcError as exc:
        if source is None or not source.ended(exc):
            if failed is None:
                raise
            raise caused(failed(exc), exc)
    except ValueError as exc:  # grpcio's, not the iterator's (that one is raised below, out of this block)
        if failed is None:
            raise
        raise caused(failed(exc), exc)
    # out of the except block, so the error keeps its own context; never held in a local, which its
    # traceback (this frame) would hold in a cycle
    raise source.take_error()


class CapturedReads:
    """A stream-stream call whose reads raise its request iterator's error: the read that finds the call
    ended by it gets that error, a later one the InvalidStateError naming it; grpcio's other errors are
    raised as _failed() gives them. Only the reads settle it: the stream's future side (result(),
    exception(), a done callback) is grpcio's own, its UNKNOWN among them (a stream's outcome is met by
    its reader; were that side to take the error too, whichever came first would leave the reader
    grpcio's UNKNOWN). The Client's streams (plugbay.core.host.translating) and a broker's
    (plugbay.core.broker.capturedcalls) are these."""

    def __init__(self, call: Any, requests: RequestSource | None) -> None:
        self._call = call
        self._requests = requests  # set once: RequestSource's lock orders the reads of several threads

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except grpc.RpcError as exc:
            requests = self._requests
            if requests is None or not requests.ended(exc):
                raise caused(self._failed(exc), exc)
        # out of the except block, so the error keeps its own context; never held in a local, which its
        # traceback (this frame) would hold in a cycle
        raise requests.take_error()

    def _failed(self, exc: grpc.RpcError) -> BaseException:
        """The error to raise for grpcio's ``exc`` when it is not the iterator's: ``exc`` itself here."""
        return exc  # type: ignore[no-any-return]


class CapturedOutcome:
    """A stream-unary call's future whose result() raises (and exception() returns) its request iterator's
    error where grpcio has its own UNKNOWN for it: the same error object every time, on any thread (a
    future's outcome is settled once); grpcio's other errors as _failed() gives them. traceback() is that
    error's, and a done callback gets this future, not grpcio's call (whose result() raises grpcio's
    UNKNOWN). The Client's futures (plugbay.core.host.translating) and a broker's
    (plugbay.core.broker.capturedcalls) are these."""

    _own: BaseException | None = None  # the iterator's error, once taken: every result() raises it

    def __init__(self, call: Any, requests: RequestSource | None) -> None:
        self._call = call
        self._requests = requests

    def result(self, timeout: float | None = None) -> Any:
        try:
            return self._call.result(timeout)
        except grpc.RpcError as exc:
            if self._own_error(exc) is None:
                raise caused(self._failed(exc), exc)
        own = self._own  # the same error each time, as a future's
        assert own is not None
        try:
            raise own  # out of the except block, as CapturedReads'
        finally:
            del own, self  # as concurrent.futures does: the error's traceback holds this frame, not the future

    def exception(self, timeout: float | None = None) -> BaseException | None:
        exc = self._call.exception(timeout)
        if isinstance(exc, grpc.RpcError):
            own = self._own_error(exc)
            return self._failed(exc) if own is None else own
        return exc  # type: ignore[no-any-return]

    def traceback(self, timeout: float | None = None) -> Any:
        exc = self._call.exception(timeout)
        own = self._own_error(exc) if isinstance(exc, grpc.RpcError) else None
        return self._call.traceback(timeout) if own is None else own.__traceback__

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        # the callback gets what the caller holds; grpcio drops its callbacks (this closure with them) once
        # it has run them at the call's end, so the closure holds this future no longer than the call runs
        self._call.add_done_callback(lambda _: fn(self))

    def _failed(self, exc: grpc.RpcError) -> BaseException:
        """The error for grpcio's ``exc`` when it is not the iterator's: ``exc`` itself here."""
        return exc  # type: ignore[no-any-return]

    def _own_error(self, exc: grpc.RpcError) -> BaseException | None:
        """The request iterator's error, if ``exc`` is grpcio's for it, taken once: result() and exception()
        give the same error each time they are asked."""
        requests = self._requests
        if self._own is None and requests is not None:
            with requests.lock:  # the error path only: several threads may read the future at once
                if self._own is None and self._requests is requests:
                    if requests.ended(exc):
                        self._own = requests.take_error()
                    # either way the future's outcome is settled: an upstream's error, handed over as the
                    # UNKNOWN's cause, leaves every later result() that UNKNOWN (not the stream's later-read
                    # InvalidStateError)
                    self._requests = None
        return self._own

