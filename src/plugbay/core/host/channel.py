"""The channel a Client owns: default deadlines, typed failures, a swappable connection.

User stubs are built on a :class:`ManagedChannel`. It is a ``grpc.Channel``
whose multicallables look up the *current* underlying channel on every call,
so the Client can replace the connection (a restarted plugin, a failover)
under stubs the user already holds. Every call gets the default deadline when
it sets none. Failures are translated:

* DEADLINE_EXCEEDED -> :class:`CallTimeout` (a CallTimeoutError)
* UNAVAILABLE / CANCELLED while the plugin has exited -> :class:`PluginDied`
  (a PluginDiedError)
* a call after the Client was killed -> ClientStateError (CANCELLED)
* a call after the plugin died and its connection was closed -> PluginDiedError (UNAVAILABLE)

No call on a closed connection reaches grpcio: building a registered method's
call object on a closed ``grpc.Channel`` crashes the process (SIGSEGV in
grpcio 1.85), so call objects are built under the lock that closing takes to
mark the connection closed, and never once it is marked (grpcio's close runs
after that, off the lock).

The translated errors are also ``grpc.RpcError`` with ``code()``/``details()``,
so code that catches gRPC errors keeps working.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Self

import grpc

from plugbay.core.host.callerrors import (  # re-exported: the channel's typed errors (see above)
    CallTimeout as CallTimeout,
    ClientClosed as ClientClosed,
    PluginDied as PluginDied,
    Unavailable as Unavailable,
)
from plugbay.core.host.deadline import call_timeout
from plugbay.core.host.judging import ExitProbe, FailureJudge
from plugbay.core.host.rawguard import refuse_stubs_once_closed
from plugbay.core.host.translating import TranslatingFuture, TranslatingStream, failed
from plugbay.core.host.translating import timed as timed  # re-exported: long imported from here
from plugbay.core.transport.causes import caused
from plugbay.core.transport.requestsource import called, capture


# A hook around each unary-unary call (plugbay.core.resilience.retry / circuit / supervisor
# install one): hook(method, attempt, timeout) where attempt(timeout) makes one try and
# timeout is the caller's own (None when the call set none).
CallHook = Callable[[str, Callable[["float | None"], Any], "float | None"], Any]


class ManagedChannel(FailureJudge, grpc.Channel):  # type: ignore[misc]
    """A grpc.Channel proxy: default deadline, error translation (FailureJudge), replaceable target."""

    def __init__(self, channel: grpc.Channel, call_timeout: float | None,
                 exit_probe: ExitProbe | None = None, name: str = "plugin") -> None:
        super().__init__(exit_probe, name)
        refuse_stubs_once_closed(channel, name)  # code may build stubs on current: see rawguard.py
        self._channel: grpc.Channel | None = channel
        self._closed = False  # the current channel was closed under us (close_current)
        self._generation = 0
        self._lock = threading.Lock()
        self.call_timeout = call_timeout
        self.call_hook: CallHook | None = None
        # Run once, when the first unary call through this channel returns (or fails): work the
        # owner keeps off that call's path (the broker stream's opening; see Client.dispense).
        self.after_call: Callable[[], None] | None = None
        # Told (on any thread) when close_current() closes the connection: a grpc.aio twin of
        # this channel (AsyncClient) closes its own on its loop.
        self.on_close_current: list[Callable[[], None]] = []

    # --- owner's controls ---------------------------------------------------------

    @property
    def current(self) -> grpc.Channel:
        channel = self._channel
        if channel is None:
            raise ClientClosed(f"the client of plugin {self._name!r} was killed; start a new Client to call it"
                               " again", None, grpc.StatusCode.CANCELLED, sent=False)
        return channel

    @property
    def generation(self) -> int:
        return self._generation

    def replace(self, channel: grpc.Channel) -> grpc.Channel | None:
        """Point every stub at ``channel``; returns the old one for the caller to close."""
        refuse_stubs_once_closed(channel, self._name)
        with self._lock:
            old, self._channel = self._channel, channel
            self._closed = False
            self._generation += 1
        return old

    def stream_timeout(self, method: str, timeout: float | None) -> float | None:
        """The timeout a new stream of ``method`` opens with, given the caller's (None: call_timeout then). A
        Supervisor's channel puts what is left of its deadline() scope in its place (resilience.calldeadline)."""
        return timeout

    def run_after_call(self) -> None:
        with self._lock:
            func, self.after_call = self.after_call, None
        if func is not None:
            func()

    def detach(self) -> grpc.Channel | None:
        with self._lock:
            old, self._channel = self._channel, None
            self._generation += 1
        return old

    def begin_close(self, brokered_open: bool = False) -> None:
        """The owner is killing or closing the connection: say so, not what the teardown breaks
        (``brokered_open``: it serves brokered servers, which the teardown stops under their calls)."""
        died = self._exit_probe is not None and self._exit_probe(0.0) is not None
        with self._lock:
            self._closing, self._died_first, self._brokered_open = True, died, brokered_open
            self._generation += 1

    def close_current(self) -> None:
        """Close the underlying channel (the plugin died); later calls fail typed, off grpcio."""
        with self._lock:  # waits for a call object being built; new_call() refuses any from here on
            self._closed = True
            self._generation += 1
            channel = self._channel
        # not under the lock: grpcio's close waits for its channel thread, which runs the done-callbacks of
        # the calls it cancels, and one calling through this channel would wait for the lock (a hang)
        if channel is not None:
            channel.close()
        for func in list(self.on_close_current):
            func()

    def refuse_calls(self) -> None:
        """The plugin is known to have exited: new calls are refused unsent from now on, before
        close_current() closes the channel. No lock: the exit probe may run under it (check_open)."""
        self._closed = True
        self._generation += 1  # call objects cached for the open channel are built again: refused

    def refuses_calls(self) -> bool:
        """The connection was closed (killed, or the plugin died): calls get translate_closed()."""
        return self._closed or self._closing

    def check_open(self) -> None:
        """Raise the typed error a call gets once the connection was closed (killed, or the plugin died)."""
        if self.refuses_calls():
            raise self.translate_closed()

    def new_call(self, kind: str, method: str, ser: Any, de: Any) -> tuple[int, Any]:
        """Build a call object on the current channel: (generation, multicallable).

        Under the lock, so the channel cannot be closed while grpcio builds it.
        """
        with self._lock:
            if not self.refuses_calls():
                factory = getattr(self.current, kind)
                return self._generation, factory(method, request_serializer=ser,
                                                 response_deserializer=de, _registered_method=True)
        # The error is made outside the lock: it may ask the runner why the plugin ended (a request to a Docker
        # engine, which may hang), and every other caller's call waited behind it for all of engine_timeout
        raise self.translate_closed()

    # --- grpc.Channel ----------------------------------------------------------------

    def unary_unary(self, method: str, request_serializer: Any = None,
                    response_deserializer: Any = None, _registered_method: bool = False) -> Any:
        return _UnaryCallable(self, "unary_unary", method, request_serializer, response_deserializer)

    def unary_stream(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None, _registered_method: bool = False) -> Any:
        return _StreamingCallable(self, "unary_stream", method, request_serializer,
                                  response_deserializer)

    def stream_unary(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None, _registered_method: bool = False) -> Any:
        return _UnaryCallable(self, "stream_unary", method, request_serializer, response_deserializer)

    def stream_stream(self, method: str, request_serializer: Any = None,
                      response_deserializer: Any = None, _registered_method: bool = False) -> Any:
        return _StreamingCallable(self, "stream_stream", method, request_serializer,
                                  response_deserializer)

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        self.current.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        self.current.unsubscribe(callback)

    def close(self) -> None:
        """User stubs do not own the connection; the Client closes it in kill()."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class _Callable:
    def __init__(self, owner: ManagedChannel, kind: str, method: str, ser: Any, de: Any) -> None:
        self._owner = owner
        self._kind = kind
        self._method = method
        self._ser = ser
        self._de = de
        self._cached: tuple[int, Any] | None = None

    def _target(self) -> Any:
        cached = self._cached
        if cached is not None and cached[0] == self._owner._generation:
            return cached[1]  # if closed since, grpcio raises ValueError: translated by callers
        self._cached = self._owner.new_call(self._kind, self._method, self._ser, self._de)
        return self._cached[1]

    def _args(self, request: Any, timeout: Any, kwargs: dict[str, Any]) -> tuple[Any, float | None]:
        """The request (a stream's may come as ``request_iterator=``, as stubs allow), the checked timeout."""
        if self._kind.startswith("stream_") and "request_iterator" in kwargs:
            request = kwargs.pop("request_iterator")
        return request, self._checked(timeout)

    def _checked(self, timeout: Any) -> float | None:
        """call_timeout(): a timeout=0 on a killed Client (or one whose plugin died) gets that error, which
        says more, not the refusal of a call with no time."""
        try:
            return call_timeout(timeout)
        except CallTimeout:
            if not self._owner.refuses_calls():
                raise
        raise self._owner.translate_closed()

    def _kwargs(self, timeout: float | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs["timeout"] = timeout if timeout is not None else self._owner.call_timeout
        return kwargs

    def _fail(self, exc: grpc.RpcError, started: float, timeout: float | None) -> BaseException:
        return failed(self._owner, exc, started, timeout)


class _UnaryCallable(_Callable):
    def __call__(self, request: Any = None, timeout: float | None = None, **kwargs: Any) -> Any:
        # _args() unless there is only a timeout to check, or nothing (the hot path: calls of every thread)
        if kwargs:
            request, timeout = self._args(request, timeout, kwargs)
        elif timeout is not None:
            timeout = self._checked(timeout)
        if self._owner.call_hook is None:  # no resilience layer: straight to the one try
            return self._once(False, request, timeout, kwargs)
        return self._hooked(False, request, timeout, kwargs)

    def with_call(self, request: Any = None, timeout: float | None = None, **kwargs: Any) -> Any:
        return self._hooked(True, *self._args(request, timeout, kwargs), kwargs)

    def _hooked(self, with_call: bool, request: Any, timeout: float | None,
                kwargs: dict[str, Any]) -> Any:
        hook = self._owner.call_hook
        if hook is None or self._kind != "unary_unary":  # a request stream cannot be replayed
            return self._once(with_call, request, timeout, kwargs)
        # timeout is the caller's (None: none given); attempt(None) gets the default deadline.
        return hook(self._method, lambda t: self._once(with_call, request, t, dict(kwargs)), timeout)

    def _once(self, with_call: bool, request: Any, timeout: float | None,
              kwargs: dict[str, Any]) -> Any:
        # _kwargs() and _target() inlined: every unary call of every thread runs this, under the GIL
        owner = self._owner
        kwargs["timeout"] = deadline = timeout if timeout is not None else owner.call_timeout
        started = time.monotonic()
        if self._kind == "stream_unary":  # its request iterator's error is raised as it is (requestsource)
            return self._once_captured(with_call, request, kwargs, started, deadline)
        try:
            cached = self._cached
            target = (cached[1] if cached is not None and cached[0] == owner._generation
                      else self._target())
            return (target.with_call if with_call else target)(request, **kwargs)
        except grpc.RpcError as exc:
            raise caused(self._fail(exc, started, deadline), exc)
        except ValueError as exc:  # grpc: "Cannot invoke RPC on closed channel!"
            raise caused(owner.translate_value_error(exc), exc)
        finally:
            if owner.after_call is not None:
                owner.run_after_call()

    def _once_captured(self, with_call: bool, request: Any, kwargs: dict[str, Any], started: float,
                       deadline: float | None) -> Any:
        """_once() of a stream-unary call: its request iterator's error raised as the call's (requestsource.called)."""
        owner = self._owner

        def send(requests: Any) -> Any:
            target = self._target()
            return (target.with_call if with_call else target)(requests, **kwargs)

        def fail(exc: Exception) -> BaseException:
            if isinstance(exc, ValueError):  # grpc: "Cannot invoke RPC on closed channel!"
                return owner.translate_value_error(exc)
            return self._fail(exc, started, deadline)
        try:
            return called(send, request, fail)
        finally:
            if owner.after_call is not None:
                owner.run_after_call()

    def future(self, request: Any = None, timeout: float | None = None, **kwargs: Any) -> Any:
        request, timeout = self._args(request, timeout, kwargs)
        hook = self._owner.call_hook
        if hook is not None and self._kind == "unary_unary":  # through the layers, as a blocking call
            from plugbay.core.host.callfuture import HookedFuture  # only hooked futures load it

            return HookedFuture(hook, self._method, self._owner._name,
                                lambda t, register: self._try_future(request, t, dict(kwargs), register),
                                timeout).start()
        request, source = capture(request) if self._kind == "stream_unary" else (request, None)
        try:
            kwargs = self._kwargs(timeout, kwargs)
            return TranslatingFuture(self._target().future(request, **kwargs), self._owner,
                                     time.monotonic(), kwargs["timeout"], source)
        except ValueError as exc:  # grpc: "Cannot invoke RPC: Channel closed!"
            raise caused(self._owner.translate_value_error(exc), exc)

    def _try_future(self, request: Any, timeout: float | None, kwargs: dict[str, Any],
                    register: Callable[[Any], bool]) -> Callable[[], Any]:
        """One try of a hooked future, its future given to ``register``; a wait for its response that
        fails as _once()'s call does."""
        deadline = self._kwargs(timeout, kwargs)["timeout"]
        started = time.monotonic()
        target = self._target()
        try:
            unstarted = getattr(target, "unstarted_future", None)  # a pool's: it may wait for an endpoint
            if unstarted is not None:
                inner = unstarted(request, **kwargs)
                if register(inner):  # not cancelled meanwhile: only then may it be sent
                    inner.start(cancellable=True)
            else:
                inner = target.future(request, **kwargs)
                register(inner)
        except ValueError as exc:  # grpc: "Cannot invoke RPC: Channel closed!"
            raise caused(self._owner.translate_value_error(exc), exc)

        def wait() -> Any:
            try:
                return inner.result()
            except grpc.RpcError as exc:
                raise caused(self._fail(exc, started, deadline), exc)
            finally:
                if self._owner.after_call is not None:
                    self._owner.run_after_call()
        return wait


class _StreamingCallable(_Callable):
    def __call__(self, request: Any = None, timeout: float | None = None, **kwargs: Any) -> Any:
        request, timeout = self._args(request, timeout, kwargs)
        kwargs = self._kwargs(self._owner.stream_timeout(self._method, timeout), kwargs)
        started = time.monotonic()
        request, source = capture(request) if self._kind == "stream_stream" else (request, None)
        try:
            call = self._target()(request, **kwargs)
        except ValueError as exc:
            raise caused(self._owner.translate_value_error(exc), exc)
        except grpc.RpcError as exc:  # a network pool's stream waits for its endpoint here, not at the first read
            raise caused(failed(self._owner, exc, started, kwargs["timeout"]), exc)
        return TranslatingStream(call, self._owner, started, kwargs["timeout"], source)
