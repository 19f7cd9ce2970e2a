"""The pool's multicallables: pick an endpoint per call, resend calls that never left, type the failures.

A unary call that provably failed before it was sent (gRPC's picker found no connection: UNAVAILABLE
"failed to connect to all addresses" while the endpoint's channel is in TRANSIENT_FAILURE; the
endpoint's channel closed under it; or the endpoint refused it UNAVAILABLE with the NOT_SENT trailer,
as the gateway does while its plugin misses its health checks, the trailer's value echoing the token
this pool sends with every unary call) goes to another endpoint within the same deadline (so does a
server-streaming call whose first read failed so: plugbay.network.poolstream); once every
endpoint was tried the call waits briefly and tries again, until its deadline. A RESOURCE_EXHAUSTED
refusal with that trailer (a full handler gate, core/plugin/gate.py) goes to each endpoint not yet
tried; once every endpoint refused (one as busy) it ends at once with that RESOURCE_EXHAUSTED:
saturation is load, a RetryPolicy's to wait out, and pool.done() does not count it against the endpoint.
A call that may have reached the plugin is never resent here (a RetryPolicy decides that): a status the
plugin sent, whatever its text, and a stream broken in flight ("Stream removed", "Socket closed") end the
call. TLS failures found while connecting become RemoteTLSError; a connection closed during setup does only
when a TLS probe proves the plugin refused this host (plugbay.network.tlsprobe), else the call retries and,
at its deadline, says the handshake was cut short. No endpoint at all becomes NoEndpointsError. A call
still in flight when its endpoint's channel closes drain_timeout after the endpoint left discovery becomes
PluginUnavailableError (never resent). All are also grpc.RpcError (UNAVAILABLE), so gRPC-minded callers
keep working. A try whose deadline was spent picking is not sent: deadline.no_time_left's CallTimeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import grpc

from plugbay.core.host.callerrors import Unavailable, closed_under_call
from plugbay.core.host.deadline import call_timeout, no_time_left
from plugbay.core.protocol.handlerstatus import handler_status
from plugbay.core.protocol.notsent import NOT_SENT, with_token
from plugbay.errors import NoEndpointsError, PinnedEndpointGoneError, RemoteProtocolError, RemoteTLSError
from plugbay.network.tls import (CHECK_TLS, NOT_HTTP2, NetworkTLS, cut_short, name_checked, not_grpc_words,
                                 tls_failure, with_lapsed_cert)
from plugbay.network.unsent import STOPPED, Tried, busy, not_sent


class Member(Protocol):
    """What a call needs of one endpoint (plugbay.network.pool.Member)."""

    key: str
    channel: grpc.Channel

    def build(self, kind: str, method: str, ser: Any, de: Any) -> Any: ...


class EndpointPool(Protocol):
    """What a call needs of the pool (plugbay.network.pool.EndpointPool; a Protocol, so no import circle)."""

    name: str
    tls: NetworkTLS | None
    diagnose_tls: bool
    no_deadline_wait: float
    drain_timeout: float
    token: str

    @property
    def closed(self) -> bool: ...
    def pick(self, deadline: float, exclude: Tried, pin: str | None = None) -> Any: ...
    def try_pick(self, deadline: float, exclude: Tried, pin: str | None = None) -> Any: ...
    def done(self, member: Any, error: BaseException | None, ok: bool = False) -> None: ...
    def release(self, member: Any) -> None: ...
    def count_resend(self) -> None: ...
    def tls_verdict(self, member: Any, timeout: float) -> str | None: ...
    def cut_short_detail(self, member: Any) -> str: ...
    def pickable_keys(self) -> list[str]: ...


# core.protocol.notsent's (why a mark is believed) and unsent's, long imported from here
__all__ = ["NOT_SENT", "with_token", "Tried", "busy", "not_sent"]


class _TypedRpcError(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, message: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(message)
        self.message = message
        self._code = code
        self._details = details

    def __str__(self) -> str:
        return self.message

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def __reduce__(self) -> tuple[Any, ...]:
        # BaseException's default calls the class with ``args`` alone, which __init__ refuses
        return type(self), (self.message, self._code, self._details), dict(self.__dict__)


class NoEndpoints(_TypedRpcError, NoEndpointsError):
    """No endpoint took the call before its deadline."""


class RemoteTLSFailure(_TypedRpcError, RemoteTLSError):
    """The TLS handshake with the remote plugin failed."""

    at_deadline = False  # raised as a wait for an endpoint ended (PoolTLS.tls_at_deadline), not at once


class NotGRPCFailure(_TypedRpcError, RemoteProtocolError):
    """A plaintext endpoint answered with no HTTP/2: found as TLS failures are (a health check's words), and
    ending a wait the same way, but no TLS is involved."""

    at_deadline = False


def no_endpoints(pool: EndpointPool, why: str, *, closed: bool = False, last: str = "") -> NoEndpoints:
    if closed:
        return NoEndpoints(f"remote plugin {pool.name!r}: {why}; make a new client to call it again",
                           grpc.StatusCode.UNAVAILABLE, why)
    extra = f"; last failure: {last}" if last else ""
    return NoEndpoints(
        f"no endpoint of remote plugin {pool.name!r} could take the call before its deadline ({why}{extra})."
        " Check that replicas are running and reachable and that discovery (the target) lists them;"
        " pool.metrics() shows each endpoint's state", grpc.StatusCode.UNAVAILABLE, why + extra)


def out_of_tries(pool: EndpointPool, exc: NoEndpointsError, tried: set[str], last: str) -> BaseException:
    """What a unary call raises when no endpoint is left to pick: after tries that never left, the
    wait's verdict with the last of their failures; else the pool's own error as it is."""
    if not tried or pool.closed or isinstance(exc, PinnedEndpointGoneError):
        return exc
    return no_endpoints(pool, str(exc.details()) if isinstance(exc, NoEndpoints) else str(exc), last=last)


def cut_by_drain(pool: EndpointPool, key: str) -> Unavailable:
    """A call cut because its endpoint left discovery and its connection closed drain_timeout later.
    UNAVAILABLE (the peer is gone; a caller's cancel is CANCELLED): a RetryPolicy may send an idempotent
    call again, but the pool never does, as the call may have reached the plugin."""
    return Unavailable(
        f"remote plugin {pool.name!r}: endpoint {key} left discovery; the call was cut after drain_timeout"
        f" ({pool.drain_timeout:g} s), an EndpointPool argument, fixed at 5 s in a RemoteClient's pool. It may have"
        " reached the plugin, so it was not sent again", None, grpc.StatusCode.UNAVAILABLE)


def drain_cut(pool: EndpointPool, member: Any, exc: grpc.RpcError) -> grpc.RpcError:
    """A sync call's failure: grpcio's CANCELLED "Channel closed!" on an endpoint the drain closed
    (``member.drained``) becomes cut_by_drain(); anything else stays what it is."""
    if (getattr(member, "drained", False) and hasattr(exc, "code") and exc.code() == grpc.StatusCode.CANCELLED
            and "channel closed" in str(exc.details() or "").lower()):
        return cut_by_drain(pool, member.key)
    return exc


class _Named(Protocol):
    """What tls_error() needs of a pool (an EndpointPool, or PoolTLS, a base of it): no import circle."""

    name: str
    tls: NetworkTLS | None


def tls_error(pool: _Named, member: Member, meaning: str, details: str,
              others: str = "") -> RemoteTLSFailure | NotGRPCFailure:
    """``others``, said after the failure: at a wait's deadline (PoolTLS.tls_at_deadline), the other endpoints
    that failed TLS too and why the rest could not take the call; empty where the failure ends a wait at once
    (PoolTLS.tls_broken: the pinned endpoint, or every one, failed TLS) or a call's last try (refused).
    A plaintext endpoint that answered no HTTP/2 (NOT_HTTP2) is a RemoteProtocolError: no TLS was involved."""
    rest = f". No other endpoint could take it: {others}" if others else ""
    if meaning == NOT_HTTP2:
        return NotGRPCFailure(not_grpc_words(f"remote plugin {pool.name!r} at {member.key}", "insecure=True",
                                             meaning, details, rest), grpc.StatusCode.UNAVAILABLE, details)
    meaning = name_checked(with_lapsed_cert(meaning, pool.tls), pool.tls, member.key)
    return RemoteTLSFailure(
        f"TLS with remote plugin {pool.name!r} at {member.key} failed: {meaning} (gRPC said: {details}){rest}."
        f" {CHECK_TLS[0].upper()}{CHECK_TLS[1:]}", grpc.StatusCode.UNAVAILABLE, details)


class PoolCallable:
    """One method of the pool (or of one pinned endpoint)."""

    def __init__(self, pool: EndpointPool, kind: str, method: str, ser: Any, de: Any,
                 pin: str | None = None) -> None:
        self._pool = pool
        self._kind = kind
        self._method = method
        self._ser = ser
        self._de = de
        self._pin = pin

    def _on(self, member: Member) -> Any:
        return member.build(self._kind, self._method, self._ser, self._de)

    def deadline(self, timeout: float | None) -> tuple[float, float | None]:
        # checked as a Client's call is: the pool is also a channel of its own (RemoteClient.pool)
        timeout = call_timeout(timeout)
        now = time.monotonic()
        if timeout is None:
            return now + self._pool.no_deadline_wait, None
        return now + timeout, now + timeout

    def __call__(self, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        if self._kind in ("unary_stream", "stream_stream"):
            return self._stream(request, timeout, kwargs)
        return self._unary(False, request, timeout, kwargs)

    def with_call(self, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        return self._unary(True, request, timeout, kwargs)

    def remaining(self, deadline: float | None, member: Member, last: str = "") -> float | None:
        """What waiting for ``member`` left of the caller's timeout. Nothing: the try is not sent (grpcio would
        race the spent deadline against it) and ``member`` goes back unused, no failure of its own."""
        left = None if deadline is None else deadline - time.monotonic()
        if left is None or left > 0:
            return left
        self._pool.release(member)
        raise no_time_left(f"the call's deadline was spent before an endpoint of remote plugin {self._pool.name!r}"
                           " could take it" + (f" (the last refused it unsent: {last})" if last else ""))

    def made(self, member: Member, tried: Tried) -> None:
        """A try was made on ``member`` (gRPC took it: not one a closed channel refused, nor one the deadline
        kept back). One on another endpoint than the one that refused the last try is a resend; a pinned
        stub's, or a lone endpoint's, try again on the same one is no failover."""
        if tried.refused_by not in (None, member.key):
            self._pool.count_resend()
        tried.refused_by = None

    def open_unless(self, lock: Any, stopped: Callable[[], bool], member: Member, tried: Tried,
                    opening: Callable[[], Any], took: Callable[[Any], None]) -> Any:
        """``opening()``, a call that returns at once (a future, a stream), made on ``member``'s channel unless
        ``stopped()``: the check, the open and ``took(call)`` are one step under ``lock`` (the caller's cancel()
        takes it), so a cancel() before it opens no call and one after it finds the call to cancel, never one
        opened after cancel() returned. The call; STOPPED when ``stopped()`` (``member`` released unused); None
        when the channel was closed under it (not sent: ``member`` released and marked tried, the next
        endpoint's turn); any other failure releases ``member`` and is raised. A failure's bookkeeping runs after
        ``lock`` is released: it tells the pool's subscribers, user code that may cancel()."""
        opened: Any = None
        failed: BaseException | None = None
        with lock:
            if stopped():
                opened = STOPPED
            else:
                try:
                    opened = opening()
                except BaseException as exc:  # noqa: BLE001 (judged below, off the lock)
                    failed = exc
                else:
                    took(opened)
        if opened is STOPPED:
            self._pool.release(member)
            return STOPPED
        if failed is None:
            return opened
        self._pool.done(member, None if isinstance(failed, ValueError) else failed)
        if isinstance(failed, ValueError) and closed_under_call(failed):
            tried.add(member.key)
            return None
        raise failed

    def marked(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The kwargs a try is sent with: a unary call's carry the pool's token (see NOT_SENT)."""
        return with_token(kwargs, self._pool.token) if self._kind == "unary_unary" else kwargs

    def future(self, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        from plugbay.network.poolfuture import FailoverFuture  # only callers of future() load it

        return FailoverFuture(self, request, timeout, self.marked(kwargs)).start()

    def unstarted_future(self, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """The future of future(), not started: a hooked future registers it for cancel() first."""
        from plugbay.network.poolfuture import FailoverFuture

        return FailoverFuture(self, request, timeout, self.marked(kwargs))

    def never_sent(self, exc: grpc.RpcError, channel: Any) -> bool:
        # a client-streaming try may have read request messages before it failed: a resend would send
        # the rest of the stream only, so such a future ends as its blocking call does
        return self._kind == "unary_unary" and not_sent(exc, channel, self._pool.token)

    def out_of_tries(self, exc: NoEndpointsError, tried: set[str], last: str) -> BaseException:
        return out_of_tries(self._pool, exc, tried, last)

    def tries(self) -> Tried:  # a future's (poolfuture imports nothing of this module)
        return Tried()

    def drain_cut(self, member: Member, exc: grpc.RpcError) -> grpc.RpcError:
        return drain_cut(self._pool, member, exc)

    def stream_ended(self, member: Member, call: Any) -> None:
        """A stream's done callback: its outcome counted for ``member`` (pool.done)."""
        self._pool.done(member, _call_error(call), ok=ended_ok(_code(call)))

    def _stream(self, request: Any, timeout: float | None, kwargs: dict[str, Any]) -> Any:
        from plugbay.network.poolstream import open_stream  # only callers of streams load it

        return open_stream(self, request, *self.deadline(timeout), kwargs)

    def _unary(self, with_call: bool, request: Any, timeout: float | None, kwargs: dict[str, Any]) -> Any:
        pool = self._pool
        kwargs = self.marked(kwargs)
        pick_until, deadline = self.deadline(timeout)
        tried = Tried()
        last = ""
        pause = 0.05
        while True:
            try:
                member = pool.pick(pick_until, tried, self._pin)
            except NoEndpointsError as exc:
                raise out_of_tries(pool, exc, tried, last) from None
            left = self.remaining(deadline, member, last)
            try:
                target = self._on(member)
                result = (target.with_call if with_call else target)(request, timeout=left, **kwargs)
            except grpc.RpcError as exc:
                self.made(member, tried)  # gRPC answered: the try was made (a closed channel raises ValueError)
                pool.done(member, exc)
                if self._kind != "unary_unary" or not not_sent(exc, member.channel, pool.token):
                    if (cut := drain_cut(pool, member, exc)) is not exc:
                        raise cut from exc
                    raise
                last, wait = self.refused(member, exc, tried, pick_until, pause)
                if wait:
                    time.sleep(wait)
                    pause = min(pause * 2, 0.5)
                continue
            except ValueError as exc:  # the endpoint's channel was closed under the call: not sent
                pool.done(member, None)
                if not closed_under_call(exc):
                    raise
                tried.add(member.key)
                continue
            except BaseException as exc:
                pool.done(member, exc)
                raise
            self.made(member, tried)
            pool.done(member, None, ok=True)
            return result

    def refused(self, member: Member, exc: grpc.RpcError, tried: Tried, pick_until: float,
                pause: float) -> tuple[str, float]:
        """A unary call that never left ``member``: (how to report it, how long to wait before the next
        try); raises when no try is left, a busy() refusal at once when every endpoint refused and one was
        busy. May wait for a TLS probe (up to 1 s): asyncio runs it off the loop."""
        pool = self._pool
        details = str(exc.details() or "")
        if busy(exc):  # nothing to diagnose: the endpoint answered
            tried.busy_refusal, meaning, last = exc, None, f"{member.key}: {details}"
        else:
            meaning, last = self._diagnose(member, details, pick_until)
        tried.add(member.key)
        every = self._all_tried(tried)
        if every and tried.busy_refusal is not None:  # saturation is load: waiting for a slot is a RetryPolicy's call
            raise tried.busy_refusal
        if meaning is not None and every:
            raise tls_error(pool, member, meaning, details) from exc
        tried.refused_by = member.key
        if not every:
            return last, 0.0
        tried.clear()  # every endpoint refused: wait a moment, then go round again
        if time.monotonic() + pause >= pick_until:
            raise no_endpoints(pool, "every endpoint refused the connection", last=last) from exc
        return last, pause

    def _diagnose(self, member: Member, details: str, pick_until: float) -> tuple[str | None, str]:
        """What a failure before sending meant for TLS (None: nothing definite), and how to report it."""
        pool = self._pool
        if not pool.diagnose_tls:
            return None, f"{member.key}: {details}"
        meaning = tls_failure(details, tls=pool.tls is not None)
        if meaning is not None or not cut_short(details):
            return meaning, f"{member.key}: {details}"
        # "Socket closed" is a refused certificate or a proxy whose backend is down: only a probe tells
        meaning = pool.tls_verdict(member, min(max(pick_until - time.monotonic(), 0.05), 1.0))
        return meaning, f"{member.key}: {pool.cut_short_detail(member)} (gRPC said: {details})"

    def _all_tried(self, tried: set[str]) -> bool:
        if self._pin is not None:
            return True
        # only endpoints a call could go to now: one that is unhealthy or ejected will never be tried,
        # and counting it would keep the refusing ones excluded until the deadline
        return all(key in tried for key in self._pool.pickable_keys())


def ended_ok(code: grpc.StatusCode | None) -> bool:
    """Whether a stream ended with ``code`` ended OK (pool.done()'s ``ok``), sync or grpc.aio."""
    return bool(code == grpc.StatusCode.OK)


def _code(call: Any) -> grpc.StatusCode | None:
    try:
        code: grpc.StatusCode | None = call.code()
        return code
    except Exception:
        return None


def _call_error(call: Any) -> BaseException | None:
    code = _code(call)
    if code in (None, grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED) or handler_status(call):
        return None  # its caller's deadline (a watch), or a status its handler passed on (handlerstatus.py): no fault
    return _TypedRpcError(str(call.details()), code, str(call.details()))
