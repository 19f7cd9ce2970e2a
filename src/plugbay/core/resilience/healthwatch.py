"""Watching a plugin's health service ("plugin") from the host, in a plugbay-health-* thread.

grpc.health.v1 Watch pushes every status change at once. A Watch stream alone
cannot see a silent network (no packets, no error), so each stream is opened
with a deadline of ``interval + timeout``: a stream that ends at its deadline
after its first answer is simply reopened, one that gets no answer at all
means the plugin is UNREACHABLE. When the plugin does not implement Watch, the watcher
falls back to Check every ``interval`` with a ``timeout`` deadline, past the call layers
installed on a Client's channel (see _start_check).

Observed states: SERVING, NOT_SERVING, SERVICE_UNKNOWN, UNKNOWN (nothing
observed yet) and UNREACHABLE (no answer, the connection failed, or the
Client's channel is gone). Each change calls ``on_change(old, new, detail)``
and, with a ``breaker``, trips it when the plugin stops serving and resets it
when it serves again. Once a Client's channel it watches is closed for good (the
plugin exited, the Client was killed), the watcher reports UNREACHABLE and its
thread ends by itself, as after stop().
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Self, TypeAlias

import grpc

from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.core.host.channel import ManagedChannel
from plugbay.core.resilience.circuit import CircuitBreaker
from plugbay.errors import ClientStateError, ConfigError
from plugbay.core.resilience.calls import describe_error, seconds_problem, status_of, wait_timeout, wait_until

_log = logging.getLogger("plugbay.health")

SERVING = "SERVING"
NOT_SERVING = "NOT_SERVING"
SERVICE_UNKNOWN = "SERVICE_UNKNOWN"
UNKNOWN = "UNKNOWN"
UNREACHABLE = "UNREACHABLE"
STATES = (SERVING, NOT_SERVING, SERVICE_UNKNOWN, UNKNOWN, UNREACHABLE)

ChannelSource: TypeAlias = "grpc.Channel | Callable[[], grpc.Channel]"
_CHECK = "/grpc.health.v1.Health/Check"


class HealthWatcher:
    """Reports a plugin's health transitions; ``with HealthWatcher(client.channel, ...) as w:``."""

    def __init__(self, channel: ChannelSource, *, service: str = "plugin", interval: float = 2.0,
                 timeout: float = 2.0, mode: str = "watch",
                 on_change: Callable[[str, str, str], None] | None = None,
                 breaker: CircuitBreaker | None = None, name: str = "plugin") -> None:
        problems = [p for p in (
            None if isinstance(channel, grpc.Channel) or callable(channel) else
            f"channel must be a Client's channel (client.channel) or a function returning one, got"
            f" {type(channel).__name__}" + (
                # its checks are blocking calls on a thread of its own: an AsyncClient's grpc.aio channel
                # answers only on its event loop, the sync Client underneath on any thread
                "; for an AsyncClient pass async_client.sync_client.channel (its grpc.aio channel serves"
                " only its event loop; the watcher calls from a thread of its own)"
                if isinstance(channel, grpc.aio.Channel) else ""),
            None if isinstance(service, str) else f"service must be a str such as 'plugin' (got {service!r})",
            # finite and at most a year, as a Supervisor's health settings: with math.inf or 1e300 the
            # thread's wait between checks raised OverflowError (it died), and each Check's deadline
            # overflowed to one already past (UNREACHABLE at once)
            seconds_problem(interval, "interval"),
            seconds_problem(timeout, "timeout"),
            None if mode in ("watch", "check") else f"mode must be 'watch' or 'check' (got {mode!r})",
            None if on_change is None or callable(on_change) else
            f"on_change must be a function (old, new, detail) or None, got {type(on_change).__name__}",
            None if breaker is None or isinstance(breaker, CircuitBreaker) else
            f"breaker must be a CircuitBreaker or None, got {type(breaker).__name__}",
        ) if p is not None]
        if problems:
            raise ConfigError(f"invalid HealthWatcher: {'; '.join(problems)}")
        self._source = channel
        self.service = service
        self.interval = interval
        self.timeout = timeout
        self.mode = mode
        self.on_change = on_change
        self.breaker = breaker
        self.name = name
        self._cond = threading.Condition()
        self._state = UNKNOWN
        self._detail = ""
        self._stop = threading.Event()
        self._call: Any = None
        self._thread: threading.Thread | None = None
        # appended by the watcher's thread while callers read: they get snapshots (the history property)
        self._history: collections.deque[tuple[float, str, str, str]] = collections.deque(maxlen=200)

    # --- public ---------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def history(self) -> list[tuple[float, str, str, str]]:
        """The state changes so far (the latest 200), oldest first, each (time.time(), old, new, why): a copy,
        safe to iterate while the watcher's thread records more."""
        with self._cond:
            return list(self._history)

    @property
    def detail(self) -> str:
        return self._detail

    def start(self) -> Self:
        if self._stop.is_set():  # its thread ended for good: a second one would watch nothing
            raise ClientStateError("a stopped HealthWatcher cannot be started again; make a new one")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"plugbay-health-{self.name}",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            try:
                call.cancel()
            except Exception:
                pass
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, states: str | set[str], timeout: float) -> bool:
        """Block until the state is one of ``states``, ``timeout`` seconds at most (math.inf: no bound);
        True when it is."""
        wanted = {states} if isinstance(states, str) else set(states)
        unknown = sorted(map(repr, wanted - set(STATES)))
        if unknown:  # a typo such as "serving" would never match: wait_for would just time out
            raise ConfigError(f"HealthWatcher.wait_for(): {', '.join(unknown)} is no health state; use one of"
                              f" {', '.join(STATES)}")
        seconds = wait_timeout(timeout, "HealthWatcher.wait_for()")
        return wait_until(self._cond, lambda: self._state in wanted, seconds, 0.5, self._stop.is_set)

    # --- the thread -------------------------------------------------------------------

    def _channel(self) -> grpc.Channel:
        source = self._source
        return source if isinstance(source, grpc.Channel) else source()

    def _report(self, state: str, detail: str = "") -> None:
        with self._cond:
            old = self._state
            self._state, self._detail = state, detail
            if old != state:
                self._history.append((time.time(), old, state, detail))
            self._cond.notify_all()
        if old == state or self._stop.is_set():
            return
        _log.info("plugin %s health: %s -> %s %s", self.name, old, state, detail)
        if self.breaker is not None:
            if state != SERVING:
                self.breaker.trip(f"health watcher: {state}" + (f" ({detail})" if detail else ""))
            elif old != UNKNOWN:
                self.breaker.reset("health watcher: SERVING again")
        if self.on_change is not None:
            try:
                self.on_change(old, state, detail)
            except Exception:
                _log.exception("health on_change callback failed")

    def _run(self) -> None:
        request = health_pb2.HealthCheckRequest(service=self.service)
        while not self._stop.is_set():
            try:
                channel = self._channel()
                if self.mode == "watch":
                    self._watch_once(health_pb2_grpc.HealthStub(channel), request)  # type: ignore[no-untyped-call]
                    continue
                self._check_once(channel, request)
            except Exception as exc:  # RpcError, a killed Client, a closed channel
                if self._stop.is_set():
                    return
                if self._closed_for_good():
                    self._report(UNREACHABLE, f"{describe_error(exc)} (health watching ended: the Client's"
                                 " connection is closed for good)")
                    self._stop.set()  # every later poll would meet the same: wait_for() ends too
                    with self._cond:
                        self._cond.notify_all()
                    return
                code = status_of(exc)
                if code in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.RESOURCE_EXHAUSTED) and self.mode == "watch":
                    # no Watch, or no room for another (plugbay caps them): the plugin answers Check
                    _log.debug("plugin %s serves no health Watch for us (%s); polling Check", self.name,
                               code.name if code is not None else "")
                    self.mode = "check"
                    continue
                if code == grpc.StatusCode.NOT_FOUND:
                    self._report(SERVICE_UNKNOWN, describe_error(exc))
                elif code == grpc.StatusCode.DEADLINE_EXCEEDED:  # the call error's advice is for calls
                    waited = self.timeout + (self.interval if self.mode == "watch" else 0.0)
                    self._report(UNREACHABLE, f"no health answer within {waited:g}s: the plugin is stuck or the"
                                 " network to it is silent (if it is only slow, raise the watcher's timeout="
                                 ", a Supervisor's health_timeout=)")
                else:
                    self._report(UNREACHABLE, describe_error(exc))
            self._stop.wait(self.interval)

    def _closed_for_good(self) -> bool:
        """Whether the channel watched is a Client's whose connection is closed for good: its plugin
        exited, or the Client (a Supervisor's channel: the Supervisor) was killed, closed or stopped.
        None is opened again (a Supervisor's restart goes to a new Client, and its own channel then
        still points at the old Client's, closed or not); a function as the source may give another
        channel at its next call, so it is never judged closed."""
        source = self._source
        if not isinstance(source, ManagedChannel):
            return False
        if source.refuses_calls():
            return True
        try:
            source.current  # raises once detached (kill(), close(), a Supervisor's stop())
        except ClientStateError:
            return True
        return False

    def _check_once(self, channel: grpc.Channel, request: health_pb2.HealthCheckRequest) -> None:
        # as a future kept in self._call, so that stop() cancels a Check a plugin does not answer
        call = _start_check(channel, request, self.timeout)
        self._call = call
        try:
            if self._stop.is_set():
                call.cancel()
                return
            try:
                resp = call.result()
            except grpc.RpcError as exc:
                if not isinstance(channel, ManagedChannel):
                    raise
                raise channel.translate(exc) from exc
        finally:
            self._call = None
        self._report(_status_name(resp.status))

    def _watch_once(self, stub: Any, request: health_pb2.HealthCheckRequest) -> None:
        got_answer = False
        call = stub.Watch(request, timeout=self.interval + self.timeout)
        self._call = call
        try:
            if self._stop.is_set():  # stop() came while it was made, and found nothing to cancel
                call.cancel()
                return
            for resp in call:
                got_answer = True
                self._report(_status_name(resp.status))
        except Exception as exc:
            if got_answer and status_of(exc) == grpc.StatusCode.DEADLINE_EXCEEDED:
                return  # a quiet interval: reopen
            raise
        finally:
            self._call = None
        # The server ended the stream: it is shutting down. Say so if it did not.
        if not self._stop.is_set() and self._state == SERVING:
            self._report(NOT_SERVING, "the health Watch stream ended (the plugin is stopping)")
        self._stop.wait(min(self.interval, 0.5))


def _start_check(channel: grpc.Channel, request: health_pb2.HealthCheckRequest, timeout: float) -> Any:
    """A Check's future; on a Client's channel it passes none of the call layers installed there.

    A breaker the watcher steers would otherwise refuse the Checks that are to see the plugin serve
    again (and one of them would take the half-open probe from the user's calls); a retry would
    repeat what the next interval asks anyway. The call object is built as the channel builds its
    own (never on a closed connection: a typed error instead).
    """
    if not isinstance(channel, ManagedChannel):
        return health_pb2_grpc.HealthStub(channel).Check.future(  # type: ignore[no-untyped-call]
            request, timeout=timeout)
    _, check = channel.new_call("unary_unary", _CHECK, health_pb2.HealthCheckRequest.SerializeToString,
                                health_pb2.HealthCheckResponse.FromString)
    try:
        return check.future(request, timeout=timeout)
    except ValueError as exc:  # grpc: "Cannot invoke RPC: Channel closed!" (closed since it was built)
        raise channel.translate_value_error(exc) from exc


def _status_name(status: int) -> str:
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    return name
