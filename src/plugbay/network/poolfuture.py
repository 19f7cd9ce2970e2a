"""A future() through the pool that fails over as a blocking call does.

A unary call that provably never left its endpoint (refused while connecting, or its channel closed
under it, or refused with the pool's NOT_SENT mark) is sent to another endpoint within the same
deadline (a busy refusal ends it once every endpoint refused, as poolcalls says); a client-streaming
one only when its channel closed before the call was made (its request iterator unread); any other
outcome is the caller's. The failover runs on a short-lived thread of its own, started only when a
try was refused: it may wait for an endpoint or a TLS probe, which gRPC's callback thread must not.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import grpc

from plugbay.core.host.callfuture import CallFuture
from plugbay.errors import NoEndpointsError
from plugbay.network.unsent import STOPPED

_log = logging.getLogger("plugbay.network")


class Tries(Protocol):
    """What the future needs of its multicallable (plugbay.network.poolcalls.PoolCallable)."""

    _pool: Any
    _pin: str | None

    def _on(self, member: Any) -> Any: ...

    def deadline(self, timeout: float | None) -> tuple[float, float | None]: ...

    def remaining(self, deadline: float | None, member: Any, last: str = "") -> float | None: ...

    def made(self, member: Any, tried: Any) -> None: ...
    def open_unless(self, lock: Any, stopped: Callable[[], bool], member: Any, tried: Any,
                    opening: Callable[[], Any], took: Callable[[Any], None]) -> Any: ...

    def refused(self, member: Any, exc: grpc.RpcError, tried: Any, pick_until: float,
                pause: float) -> tuple[str, float]: ...

    def never_sent(self, exc: grpc.RpcError, channel: Any) -> bool: ...

    def tries(self) -> Any: ...

    def out_of_tries(self, exc: NoEndpointsError, tried: set[str], last: str) -> BaseException: ...

    def drain_cut(self, member: Any, exc: grpc.RpcError) -> grpc.RpcError: ...


class FailoverFuture(CallFuture):
    """grpc.Future and grpc.Call of the current try; the outcome is the last try's."""

    def __init__(self, owner: Tries, request: Any, timeout: float | None, kwargs: dict[str, Any]) -> None:
        super().__init__(_log, f"remote plugin {owner._pool.name}")
        self._owner = owner
        self._request = request
        self._kwargs = kwargs
        self._pick_until, self._deadline = owner.deadline(timeout)
        self._tried = owner.tries()
        self._last = ""
        self._pause = 0.05
        self._picking = False  # _pick() is waiting for an endpoint: cancel() wakes it

    # --- the tries ----------------------------------------------------------------------

    def start(self, cancellable: bool = False) -> FailoverFuture:
        """The first try, on the caller's thread (it waits for an endpoint, as a blocking call would;
        ``cancellable``: the future is known to someone who may cancel() that wait)."""
        try:
            self._next_try(blocking_errors=True, cancellable=cancellable)
        except BaseException as exc:
            self._finish(None, exc)  # ended: nothing that holds it (a hooked future) waits on it for good
            raise
        return self

    def _next_try(self, blocking_errors: bool = False, cancellable: bool = True) -> None:
        pool, owner = self._owner._pool, self._owner
        while True:
            try:
                member = (self._pick() if cancellable else pool.pick(self._pick_until, self._tried, owner._pin))
            except NoEndpointsError as exc:
                error = owner.out_of_tries(exc, self._tried, self._last)
                if blocking_errors:
                    raise error from None
                self._finish(None, error)
                return
            if member is None:  # cancelled while it waited for an endpoint
                return
            left = owner.remaining(self._deadline, member, self._last)  # none: raises, member released
            inner = owner.open_unless(self._cond, lambda: self._cancelled, member, self._tried,
                                      lambda: owner._on(member).future(self._request, timeout=left, **self._kwargs),
                                      self._took)
            if inner is STOPPED:  # cancelled as it got an endpoint: never sent
                return
            if inner is None:  # the endpoint's channel closed under the call: not sent
                continue
            owner.made(member, self._tried)  # not before: a closed channel refuses the try (ValueError)
            inner.add_done_callback(lambda f, m=member: self._tried_on(m, f))
            return

    def _took(self, inner: Any) -> None:
        self._inner = inner  # under cancel()'s lock: a cancel() from now on cancels it (its end reports to the pool)

    def _pick(self) -> Any:
        """An endpoint for the next try, waiting on the pool's condition for one as pool.pick() does, but not past
        a cancel(): None then (cancel() wakes the wait, see _stop_layers)."""
        with self._cond:
            self._picking = True
        try:
            return self._owner._pool.pick_unless(lambda: self._cancelled, self._pick_until, self._tried,
                                                 self._owner._pin)
        finally:
            with self._cond:
                self._picking = False

    def _stop_layers(self) -> None:
        # called by cancel() with no lock held: the pick holds the pool's condition while it asks for the cancel,
        # so cancel() must not take that condition under the future's own. Only a pick under way is woken (one
        # begun after the cancel sees the flag before its first try).
        with self._cond:
            picking = self._picking
        if picking:
            self._owner._pool.wake()

    def _tried_on(self, member: Any, inner: Any) -> None:
        pool = self._owner._pool
        if inner.cancelled():
            pool.done(member, None)
            self._finish(None, None)
            return
        error = inner.exception()
        pool.done(member, error, ok=error is None)
        try:
            if error is None:
                self._finish(inner.result(), None)
            elif (isinstance(error, grpc.RpcError) and not self._cancelled
                  and self._owner.never_sent(error, member.channel)):
                threading.Thread(target=self._fail_over, args=(member, error), daemon=True,
                                 name=f"plugbay-failover-{pool.name}").start()
            else:
                self._finish(None, self._owner.drain_cut(member, error) if isinstance(error, grpc.RpcError)
                             else error)
        except Exception as exc:  # raised in grpc's callback it would be lost, and the future never end
            self._finish(None, error if error is not None else exc)

    def _fail_over(self, member: Any, error: grpc.RpcError) -> None:
        try:
            self._last, wait = self._owner.refused(member, error, self._tried, self._pick_until, self._pause)
            if wait:
                with self._cond:
                    self._cond.wait_for(lambda: self._cancelled, wait)
                self._pause = min(self._pause * 2, 0.5)
            if not self._cancelled:
                self._next_try()
        except BaseException as exc:
            self._finish(None, exc)

    # --- grpc.Call: the call's own deadline, not the current try's -----------------------------

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(self._deadline - time.monotonic(), 0.0)
