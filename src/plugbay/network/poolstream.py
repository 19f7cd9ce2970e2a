"""A sync streaming call through the endpoint pool: opened on an endpoint the pool picks, and sent to
another one when it provably never left the first.

A server-streaming call (one request, a stream of answers) fails at its first read, not when it is made:
gRPC opens it lazily. When that read fails as unsent (plugbay.network.unsent.not_sent: no connection to the
endpoint, a replica just killed that its health checks have not caught yet), nothing reached the plugin and
nothing came back, so the same request goes to another endpoint within the call's deadline, as a unary
call's does. Once an answer came, a failure ends the stream: the plugin may have acted on the request. A
client-streaming or bidi call is not sent again: gRPC may have taken messages from the caller's iterator
that a second call would not see. A stream its caller cancel()led is not sent again either, also when
cancel() came while its read picked the next endpoint (a cancel() ends that pick at once, and no call is
opened after it): its next read raises CANCELLED, and code() and details() say so (cancel() itself
says False when the call had already ended, as gRPC's does, and the first one during a resend True, when the
stream is under way again, as cancelled() then says too; once a read raised the call's failure, a
cancel() leaves code() as it was). Whether the endpoint's channel was failing is noted as the call ends, not
at the read.

Done callbacks (add_done_callback) are the current call's: one added before the first read fires when
that call ends, also when it failed unsent and the read then sends the request elsewhere; the new call
does not carry it. Add them after the first answer to hear how the stream ended.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

import grpc

from plugbay.errors import NoEndpointsError
from plugbay.network.unsent import STOPPED, Tried, channel_failing, not_sent


class Streams(Protocol):
    """What a stream needs of its multicallable (plugbay.network.poolcalls.PoolCallable: a Protocol, so no
    import circle)."""

    _pool: Any
    _kind: str
    _pin: str | None

    def _on(self, member: Any) -> Any: ...
    def remaining(self, deadline: float | None, member: Any, last: str = "") -> float | None: ...
    def made(self, member: Any, tried: Any) -> None: ...
    def open_unless(self, lock: Any, stopped: Callable[[], bool], member: Any, tried: Any,
                    opening: Callable[[], Any], took: Callable[[Any], None]) -> Any: ...
    def out_of_tries(self, exc: NoEndpointsError, tried: set[str], last: str) -> BaseException: ...
    def drain_cut(self, member: Any, exc: grpc.RpcError) -> grpc.RpcError: ...
    def stream_ended(self, member: Any, call: Any) -> None: ...


def open_stream(owner: Streams, request: Any, pick_until: float, deadline: float | None,
                kwargs: dict[str, Any]) -> PoolStream:
    """The stream of ``owner``'s method, started on the first endpoint that takes it."""
    stream = PoolStream(owner, request, pick_until, deadline, kwargs)
    stream.start()
    return stream


class StreamCancelled(grpc.RpcError):  # type: ignore[misc]
    """A stream its caller cancelled, read after its call had failed unsent: gRPC's own words for a cancel."""

    def __str__(self) -> str:
        return "the stream was cancelled by its caller"

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED

    def details(self) -> str:
        return "Locally cancelled by application!"


class PoolStream:
    """A sync stream through the pool: iterating it raises drain_cut()'s error; the rest delegates to the
    call on the endpoint it is on now."""

    def __init__(self, owner: Streams, request: Any, pick_until: float, deadline: float | None,
                 kwargs: dict[str, Any]) -> None:
        self._owner = owner
        self._pool = owner._pool
        self._request = request
        self._pick_until, self._deadline = pick_until, deadline
        self._kwargs = kwargs
        self._tried = Tried()
        self._answered = False  # an answer came: the call reached the plugin
        self._call: Any = None
        self._member: Any = None
        self._cancelled = False  # cancel() was called: no read sends the request again
        self._failing: bool | None = None  # the call's channel was failing when the call ended
        self._raised = False  # a read raised the call's failure: its status stands (as a gRPC call's)
        self._resending = False  # a read is sending the request again (picking, opening): the stream is under way
        self._cut_under_way = False  # cancel() came then: it cancelled the stream, as gRPC's would a live call
        # cancel() and a resend's check and open of its new call (start): the cancel() reaches the new call or none
        # is opened
        self._lock = threading.Lock()

    def start(self) -> None:
        """Open the call on an endpoint not tried yet (the pool waits, until pick_until, for one)."""
        pool, tried = self._pool, self._tried
        while True:
            try:  # a cancel() ends the wait at once (it wakes the pool's picks): nothing is sent again
                member = pool.pick_unless(lambda: self._cancelled, self._pick_until, tried, self._owner._pin)
            except NoEndpointsError as exc:
                raise self._owner.out_of_tries(exc, tried, "") from None
            if member is None:
                raise StreamCancelled()
            left = self._owner.remaining(self._deadline, member)  # none: raises unsent, member released
            opened = self._owner.open_unless(self._lock, lambda: self._cancelled, member, tried,
                                             lambda: self._owner._on(member)(self._request, timeout=left,
                                                                             **self._kwargs),
                                             lambda call: self._took(call, member))
            if opened is STOPPED:  # cancel() came as the pick ended: the endpoint went back unused
                raise StreamCancelled()
            if opened is not None:  # None: closed under it, the next endpoint's turn
                break
        self._owner.made(member, tried)
        opened.add_done_callback(lambda c: self._ended(member, c))

    def _took(self, call: Any, member: Any) -> None:
        self._call, self._member, self._failing = call, member, None  # under _lock: cancel() reaches it

    def _ended(self, member: Any, call: Any) -> None:
        failing = channel_failing(member.channel)  # outside the lock: it may take a while
        with self._lock:
            if call is self._call:  # a resend's new call keeps its own None
                self._failing = failing
        self._owner.stream_ended(member, call)

    def _unsent(self, exc: grpc.RpcError) -> bool:
        """Whether the failed first read ``exc`` provably never left its endpoint, and may go to another (not
        once a read raised the failure: a next read raises it again, as gRPC's does)."""
        if self._answered or self._raised or self._owner._kind != "unary_stream" or self._owner._pin is not None:
            return False
        return not_sent(exc, self._member.channel, self._pool.token, self._failing)

    def _resend(self, exc: grpc.RpcError) -> bool:
        """Whether the failed first read ``exc`` is sent again elsewhere (then the stream is on its new call)."""
        if not self._unsent(exc):
            return False
        if self._cancelled:
            raise StreamCancelled() from exc
        if not self._tried.refused_unsent(self._member.key, self._pool.pickable_keys()):
            return False  # no other endpoint to go to: the failure is the answer
        with self._lock:
            self._resending = True
        try:
            self.start()
        except (NoEndpointsError, grpc.RpcError):
            with self._lock:  # one step: a cancel() after it finds the stream ended (False), not under way
                cancelled, self._resending = self._cancelled, False
            if cancelled:  # cancel() came while none took it: the cancel is how the stream ended (code())
                raise StreamCancelled() from exc
            return False  # none took it in time: the first failure says what happened
        finally:
            with self._lock:
                self._resending = False
        if self._cancelled:  # cancel() came once the new call was opened (start's lock): that call is cancelled
            self._call.cancel()  # here too: by the time the read raises, not when cancel() gets to it
            raise StreamCancelled() from exc
        return True

    def __iter__(self) -> PoolStream:
        return self

    def __next__(self) -> Any:
        while True:
            try:
                answer = next(self._call)
            except grpc.RpcError as exc:
                if self._resend(exc):
                    continue
                self._raised = True
                error = self._owner.drain_cut(self._member, exc)
                if error is exc:
                    raise
                raise error from exc
            self._answered = True
            return answer

    def cancel(self) -> bool:
        with self._lock:
            self._cancelled = True
            call = self._call
            resending = self._resending
            first = resending and not self._cut_under_way  # a second cancel() says False, as gRPC's
            self._cut_under_way = self._cut_under_way or resending
        if resending:  # its pick, waiting for an endpoint, sees the cancel now, not at its deadline (one not
            self._pool.wake()  # begun yet sees the flag before its first try)
        return bool(call.cancel()) or first

    def cancelled(self) -> bool:
        return self._cut_under_way or bool(self._call.cancelled())

    def _cut(self) -> bool:
        """Cancelled by its caller, on a call that ended unsent, before a read raised its failure: its read
        raises (or raised) CANCELLED."""
        call = self._call
        return (not self._raised and self._cancelled and call.done() and call.code() != grpc.StatusCode.OK
                and call.code() != grpc.StatusCode.CANCELLED and self._unsent(call))

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED if self._cut() else self._call.code()

    def details(self) -> str | None:
        return StreamCancelled().details() if self._cut() else self._call.details()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)
