"""Unary futures that are more than one gRPC try, as the blocking call is.

:class:`CallFuture` is what such a future shows its caller: grpc.Future, and
grpc.Call of the current (at the end, the last) try. cancel() ends it at once,
as gRPC's own futures do, and a done callback that fails is logged while the
others still run. :class:`HookedFuture` runs a Client's call layers (retry, a
circuit breaker, a Supervisor's ready gate) around its tries; a network pool's
failover (plugbay.network.poolfuture) is the other kind.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Self

import grpc

_log = logging.getLogger("plugbay.client")


class CallFuture(grpc.Future, grpc.Call):  # type: ignore[misc]
    """grpc.Future and grpc.Call of the current try; the outcome is set once, by _finish()."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what  # "plugin 'kv'": for the log line of a failed done callback
        self._cond = threading.Condition()
        self._inner: Any = None
        self._outcome: tuple[Any, BaseException | None] | None = None
        self._cancelled = False
        self._callbacks: list[Callable[[Self], None]] = []

    def _set_inner(self, inner: Any) -> bool:
        """Make ``inner`` the current try; False, and ``inner`` cancelled, when this future was cancelled."""
        with self._cond:
            self._inner = inner
            cancelled = self._cancelled
        if cancelled:
            inner.cancel()
        return not cancelled

    def _finish(self, response: Any, error: BaseException | None) -> None:
        with self._cond:
            if self._outcome is not None:
                return
            self._outcome = (response, error)
            callbacks, self._callbacks = self._callbacks, []
            self._cond.notify_all()
        for callback in callbacks:
            self._run(callback)

    def _run(self, callback: Callable[[Self], None]) -> None:
        """One done callback; its failure is logged and the others still run (as gRPC's own futures do)."""
        try:
            callback(self)
        except Exception:
            self._log.exception("a done callback of a call to %s failed", self._what)

    # --- grpc.Future ----------------------------------------------------------------------

    def cancel(self) -> bool:
        with self._cond:
            if self._outcome is not None:
                return False
            # the outcome is set with the mark, under one lock: a try ending meanwhile cannot finish the
            # future with its own error after cancel() has said True
            self._cancelled = True
            self._outcome = (None, None)  # cancelled at once, as gRPC's own futures are
            inner = self._inner
            callbacks, self._callbacks = self._callbacks, []
            self._cond.notify_all()
        if inner is not None:
            inner.cancel()
        self._stop_layers()  # before the done callbacks: one that waits for the call's end must not wait long
        for callback in callbacks:
            self._run(callback)
        return True

    def _stop_layers(self) -> None:
        """Tell what blocks on the call's behalf (a retry's backoff, a ready gate) that it was cancelled."""

    def cancelled(self) -> bool:
        with self._cond:
            return self._cancelled and self._outcome is not None

    def running(self) -> bool:
        return not self.done()

    def done(self) -> bool:
        with self._cond:
            return self._outcome is not None

    def _wait(self, timeout: float | None) -> tuple[Any, BaseException | None]:
        with self._cond:
            if not self._cond.wait_for(lambda: self._outcome is not None, timeout):
                raise grpc.FutureTimeoutError()
            assert self._outcome is not None
            if self._cancelled:
                raise grpc.FutureCancelledError()
            return self._outcome

    def result(self, timeout: float | None = None) -> Any:
        response, error = self._wait(timeout)
        if error is not None:
            raise error
        return response

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self._wait(timeout)[1]

    def traceback(self, timeout: float | None = None) -> Any:
        error = self.exception(timeout)
        return None if error is None else error.__traceback__

    def add_done_callback(self, fn: Callable[[Self], None]) -> None:
        with self._cond:
            if self._outcome is None:
                self._callbacks.append(fn)
                return
            cancelled = self._cancelled
        if cancelled:  # added while cancel() ran: it may not have told the layers yet (a second wake is harmless)
            self._stop_layers()
        self._run(fn)

    # --- grpc.Call (of the last try; a failure of plugbay's own has no try behind it) ------------

    def _call_or_error(self) -> tuple[Any, BaseException | None]:
        with self._cond:
            error = self._outcome[1] if self._outcome is not None else None
            return self._inner, error

    def _ended(self) -> tuple[Any, BaseException | None, bool]:
        """(last try, error, cancelled) once the call has ended: code() and details() wait for it, as
        gRPC's do (a try's own status, say a retried UNAVAILABLE, is not the call's)."""
        with self._cond:
            self._cond.wait_for(lambda: self._outcome is not None)
            assert self._outcome is not None
            return self._inner, self._outcome[1], self._cancelled

    def code(self) -> grpc.StatusCode | None:
        inner, error, cancelled = self._ended()
        if cancelled:
            return grpc.StatusCode.CANCELLED
        if isinstance(error, grpc.RpcError):
            return error.code()
        if error is not None:  # not a call's failure (a bad argument): no try of it to ask
            return grpc.StatusCode.UNKNOWN
        return None if inner is None else inner.code()

    def details(self) -> str | None:
        inner, error, cancelled = self._ended()
        if cancelled:
            return "Locally cancelled by application!"  # gRPC's own words for a cancelled call
        if isinstance(error, grpc.RpcError):
            return error.details()  # type: ignore[no-any-return]
        if error is not None:
            return f"{type(error).__name__}: {error}"
        return None if inner is None else inner.details()

    def initial_metadata(self) -> Any:
        inner, _ = self._call_or_error()
        return None if inner is None else inner.initial_metadata()

    def trailing_metadata(self) -> Any:
        inner, _ = self._call_or_error()
        return None if inner is None else inner.trailing_metadata()

    def is_active(self) -> bool:
        return not self.done()

    def time_remaining(self) -> float | None:
        inner, _ = self._call_or_error()
        return None if inner is None or self.done() else inner.time_remaining()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._cond:
            if self._outcome is not None:
                return False
            self._callbacks.append(lambda _future: callback())
            return True


# One try of a hooked call: start it, handing its future to ``register`` before anything may block (False:
# the future was cancelled meanwhile, the try is not to be sent), and a wait for its response (errors
# translated as the blocking call's).
TryStarter = Callable[["float | None", Callable[[Any], bool]], Callable[[], Any]]


class _Cancelled(BaseException):
    """Ends the layers' run once the future was cancelled: not an Exception, so a retry does not
    retry it and a circuit breaker counts it as an interrupted call (its probe slot freed)."""


class CancelToken:
    """Fired by a HookedFuture's cancel(). A layer that blocks on the future's thread (a Supervisor's
    ready gate waiting for a restart) reads it through :func:`cancel_token` and registers a waker, so
    its wait ends at once and the thread is freed, rather than when the call's timeout runs out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fired = False
        self._wakers: list[Callable[[], None]] = []

    def fired(self) -> bool:
        return self._fired

    def fire(self) -> None:
        with self._lock:
            self._fired = True
            wakers = list(self._wakers)
        for wake in wakers:
            _wake(wake)

    @contextmanager
    def waking(self, wake: Callable[[], None]) -> Iterator[None]:
        """``wake()`` is called when the token fires while the block runs (at once if it has fired)."""
        with self._lock:
            self._wakers.append(wake)
            fired = self._fired
        if fired:
            _wake(wake)
        try:
            yield
        finally:
            with self._lock:
                self._wakers.remove(wake)

    def raise_if_fired(self) -> None:
        """Ends the layers' run once the future was cancelled."""
        if self._fired:
            raise _Cancelled()


def _wake(wake: Callable[[], None]) -> None:
    try:
        wake()
    except Exception:  # cancel() must still return; the wait then ends at its next look
        _log.exception("waking a cancelled call's wait failed")


# The token of the hooked future whose layers run in this context (set on its own thread only).
_TOKEN: contextvars.ContextVar[CancelToken | None] = contextvars.ContextVar("plugbay_call_cancel", default=None)


def cancel_token() -> CancelToken | None:
    """The cancel token of the future() call whose layers run here; None in a blocking call."""
    return _TOKEN.get()


class HookedFuture(CallFuture):
    """A unary future() run through the channel's call hook, as the blocking call is.

    The layers block (a retry's backoff, a wait for a restarting plugin), which
    neither the caller of future() nor gRPC's callback thread may, so the hook
    runs on a short-lived thread of the future's own, in a copy of the caller's
    context (idempotent() marks it); each try is a gRPC future, which cancel() cancels.
    """

    def __init__(self, hook: Callable[[str, Callable[[float | None], Any], float | None], Any], method: str,
                 name: str, start_try: TryStarter, timeout: float | None) -> None:
        super().__init__(_log, f"plugin {name!r}")
        self._hook = hook
        self._method = method
        self._name = name
        self._start_try = start_try
        self._timeout = timeout
        # the call's own deadline, when future() was given one (the layers' deadline for all tries)
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._token = CancelToken()

    def start(self) -> HookedFuture:
        # The caller's context goes with it (a new thread starts with an empty one): the layers read it,
        # as idempotent()'s mark, just as they do for a blocking call made on the caller's own thread.
        context = contextvars.copy_context()
        threading.Thread(target=context.run, args=(self._run_hook,), daemon=True,
                         name=f"plugbay-call-{self._name}").start()
        return self

    def _stop_layers(self) -> None:
        self._token.fire()  # a layer waiting on the hook's thread stops now: the thread ends

    def _run_hook(self) -> None:
        _TOKEN.set(self._token)  # this thread's own context (a copy of the caller's)
        try:
            response = self._hook(self._method, self._attempt, self._timeout)
        except _Cancelled:
            self._finish(None, None)  # already finished by cancel(): a no-op
        except BaseException as exc:
            self._finish(None, exc)
        else:
            self._finish(response, None)

    def time_remaining(self) -> float | None:
        if self._deadline is None:  # no deadline for the whole call: the try in flight's, if one is
            return super().time_remaining()
        return max(self._deadline - time.monotonic(), 0.0)

    def _attempt(self, timeout: float | None) -> Any:
        if self._cancelled:
            raise _Cancelled()
        # registered before it may block (a pool's try waits for an endpoint): a cancel() meanwhile
        # then reaches it, and it is never sent
        wait = self._start_try(timeout, self._set_inner)
        if self._cancelled:
            raise _Cancelled()
        try:
            return wait()
        except Exception:
            if self._cancelled:  # the try ended because of cancel(): no failure of the plugin's
                raise _Cancelled() from None
            raise
