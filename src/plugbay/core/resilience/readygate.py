"""The Supervisor's innermost call layer: hold calls while the plugin restarts.

A call that finds the plugin restarting waits for its successor (within the
call's deadline). A call that finds the plugin already dead, or fails before
anything was sent (the old Client's connection was closed), is sent to the
successor. A call in flight when the plugin died is not resent here: that is
the RetryPolicy's decision, since only it knows whether the call may be repeated.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import grpc

from plugbay.errors import ClientStateError, PlugbayError, PluginDiedError
from plugbay.core.host.callerrors import CallTimeout, ClientClosed
from plugbay.core.host.callfuture import CancelToken, cancel_token
from plugbay.core.host.channel import ManagedChannel
from plugbay.core.host.client import Client
from plugbay.core.host.deadline import NO_DEADLINE, no_time_left
from plugbay.core.resilience.calldeadline import SharedDeadline, stream_timeout
from plugbay.core.resilience.calls import AsyncAttempt, Attempt, wait_until
# what the calls a Supervisor's kill ends are told, in a module of their own (the ~400-line rule)
from plugbay.core.resilience.endedcalls import (mark_restarting as mark_restarting, mark_stopping as mark_stopping,
                                                stopped_closed)


class SupervisedChannel(ManagedChannel):
    """The stubs' channel; the underlying one is the current Client's ManagedChannel."""

    ready_gated = True  # its hook is the ReadyGate: install() must not replace it

    def __init__(self, sup: Restarter, channel: grpc.Channel, call_timeout: float | None) -> None:
        super().__init__(channel, call_timeout, None, sup.name)
        self._sup = sup
        self._stopped = False

    def replace(self, channel: grpc.Channel) -> grpc.Channel | None:
        """Point the stubs at the channel of the Client the Supervisor adopts (each one, the first too).

        A call that meets that plugin's death is told first what the Supervisor does about it: the
        Client's own advice (start a new Client) is wrong for stubs that outlive the restart."""
        if isinstance(channel, ManagedChannel):
            channel.died_advice = lambda sent: restart_advice(self._sup, sent=sent)
        return super().replace(channel)

    def stream_timeout(self, method: str, timeout: float | None) -> float | None:
        return stream_timeout(self._sup, method, timeout)  # a sup.deadline() scope bounds streams too

    def translate(self, exc: grpc.RpcError, past_deadline: bool = False) -> BaseException:
        if isinstance(exc, PlugbayError):
            return exc  # the Client's channel already said what happened
        return super().translate(exc, past_deadline)

    @property
    def current(self) -> grpc.Channel:
        """The current Client's channel; once the Supervisor was stopped, an error saying so (a HealthWatcher on
        this channel polls on): the Client's own advice, to start a new Client, is wrong for its stubs."""
        try:
            return super().current
        except ClientClosed:
            if self._sup.state != "stopped" and not self._stopped:
                raise
            raise stopped_closed(self._sup.name, self._sup.kind, None) from None

    def detach_stopped(self) -> None:
        """The Supervisor was stopped: let go of the Client's channel for good. Every call is told so, one with
        timeout=0 too, and on an AsyncSupervisor's channel (refuses_calls: the error a closed one gets)."""
        sup = self._sup
        self.killed_error = lambda original: stopped_closed(sup.name, sup.kind, original)
        self._stopped = True
        self.begin_close()
        self.detach()


def restart_advice(sup: Restarter, again: str = "", sent: bool = False) -> str:
    """What a call that met the plugin's death is to do, by what its Supervisor does about the death;
    ``again`` names what is to be asked again once the restarted plugin runs (a call when empty); ``sent``: the
    call was in flight, so the plugin may have run it (it is for the caller to repeat only what is harmless twice)."""
    kind = sup.kind
    if sup.state == "stopped":
        return f"its {kind} was stopped; make a new one"
    if not sup.can_restart:  # it gives up at this death: nothing would answer a call made again
        return (f"its {kind} cannot restart it: it was given reattach= and no cmd= (pass cmd= too); make a new"
                f" {kind}")
    if sup.max_restarts == 0:
        return f"its {kind} does not restart it (RestartPolicy(max_restarts=0))"
    if sup.state == "failed":
        return f"its {kind} gave up restarting it (wait_running() raises why); make a new {kind}"
    if sup.restarts_left() <= 0:  # the monitor may not have seen this death yet: the state still says running
        return (f"its {kind} will not restart it: its RestartPolicy's budget is spent (max_restarts within"
                f" window); make a new {kind}")
    if again:
        return (f"the {kind} is restarting it (as its RestartPolicy allows): ask {again} again once"
                " wait_running() is true")
    if sent:
        return (f"the {kind} is restarting it (as its RestartPolicy allows). Call it again only if running it twice"
                " is harmless (plugbay resends only calls marked safe to repeat: idempotent() or"
                " RetryPolicy(methods=...)); later unary calls wait for the restarted plugin, a stream is opened once"
                " wait_running() is true")
    return (f"the {kind} is restarting it (as its RestartPolicy allows): call again; a unary call waits for"
            " the restarted plugin, a stream is opened once wait_running() is true")


def plugin_gone(client: Client) -> bool:
    """Has the plugin exited, or can it no longer read a call (killed, its exit under way)? Then a call made now
    waits for its successor: sent, it would fail as in flight. Cheap enough for every call, and never blocks."""
    return client.exited or client.runner.ending()


def gone_unseen(client: Client | None, stopping: threading.Event, wake: threading.Event) -> bool:
    """Has the running plugin exited unseen by the Supervisor's monitor? Then ``wake`` has it look now:
    its state says running until the monitor's next tick, and a wait for it to run must not end there."""
    if client is None or stopping.is_set() or not plugin_gone(client):
        return False
    wake.set()
    return True


class Restarter(Protocol):
    """What the gate needs of its Supervisor (plugbay.core.resilience.supervisor)."""

    name: str
    kind: str  # what its messages call it: "Supervisor", or "AsyncSupervisor" for the one an AsyncSupervisor runs
    restarts: int
    last_failure: str | None

    @property
    def call_timeout(self) -> float | None: ...

    @property
    def max_restarts(self) -> int: ...

    @property
    def can_restart(self) -> bool: ...  # False: it was given reattach= and a ClientConfig without cmd=

    @property
    def state(self) -> str: ...

    @property
    def current_client(self) -> Client | None: ...

    @property
    def _cond(self) -> threading.Condition: ...  # notified on each change of the state or the Client

    def wait_running(self, timeout: float) -> bool: ...

    def wake_waiters(self) -> None: ...

    def channel_generation(self) -> int: ...

    def changed_since(self, generation: int, timeout: float) -> bool: ...

    def raise_if_failed(self) -> None: ...

    def restarts_left(self) -> int: ...


class ReadyGate:
    """Innermost call layer: wait while the plugin restarts; resend calls that never left."""

    def __init__(self, sup: Restarter) -> None:
        self._sup = sup

    def run(self, method: str, attempt: Attempt, timeout: float | None) -> Any:
        sup = self._sup
        start, shared, timeout, deadline = _deadline(sup, method, timeout)
        token = cancel_token()  # a cancelled future() ends the waits below at once
        try:
            for _ in range(sup.max_restarts + 2):
                remaining = None if deadline is None else deadline - time.monotonic()
                self._wait_running(method, remaining, start, token, timeout, shared)
                generation = sup.channel_generation()
                client = sup.current_client
                if client is not None and plugin_gone(client) and self._changed(
                        generation, _within(deadline, 5.0), token):
                    if shared is not None:
                        shared.waited_for_restart()
                    continue  # the plugin is already gone: this call waits for its successor
                left = _left(deadline, shared)  # outside: its refusal is no timeout of the call to reword
                try:
                    return attempt(left)
                except CallTimeout as exc:
                    if shared is not None:
                        shared.timed_out(exc)  # said as the shared deadline's end when that is what it was
                    raise
                except (ClientStateError, PluginDiedError) as exc:
                    # Refused before anything was sent (the plugin's connection was already closed:
                    # ``sent`` False), so it is safe to send again once the plugin is back.
                    if getattr(exc, "sent", isinstance(exc, grpc.RpcError)) or not self._changed(
                            generation, _within(deadline, 2.0), token):
                        raise
            raise _restarting_on_every_try(sup, method)
        finally:
            if shared is not None:
                shared.done()

    def _wait_running(self, method: str, remaining: float | None, start: float, token: CancelToken | None,
                      timeout: float | None, shared: SharedDeadline | None) -> None:
        sup = self._sup
        limit = 3600.0 if remaining is None else max(remaining, 0.0)
        if shared is not None and not sup.wait_running(0):  # not running: the wait below is for a restart
            shared.waited_for_restart()
        if not self._until(sup.wait_running, limit, token):
            raise _not_running(sup, method, time.monotonic() - start, timeout, shared)

    def _changed(self, generation: int, timeout: float, token: CancelToken | None) -> bool:
        return self._until(lambda seconds: self._sup.changed_since(generation, seconds), timeout, token)

    def _until(self, wait: Callable[[float], bool], seconds: float, token: CancelToken | None) -> bool:
        """``wait(seconds)``; in a future() call, asked again at each change of the Supervisor (``wait(0)``)
        until the future is cancelled, which wakes it (_Cancelled is raised then)."""
        if token is None:
            return wait(seconds)
        with token.waking(self._sup.wake_waiters):  # a stop() ends it too, as it ends wait_running()'s own wait
            done = wait_until(self._sup._cond, lambda: wait(0.0), seconds, 0.5,
                              lambda: token.fired() or self._sup.state == "stopped")
        token.raise_if_fired()
        return done

    async def run_async(self, method: str, attempt: AsyncAttempt, timeout: float | None) -> Any:
        """run() for an AsyncSupervisor's calls: the same rules; its waits poll, never block the loop."""
        sup = self._sup
        _, shared, timeout, deadline = _deadline(sup, method, timeout)
        try:
            for _ in range(sup.max_restarts + 2):
                limit = 3600.0 if deadline is None else max(deadline - time.monotonic(), 0.0)
                if shared is not None and not sup.wait_running(0):  # never blocks
                    shared.waited_for_restart()
                if not await polled(lambda: sup.wait_running(0) or sup.state == "stopped", limit) \
                        or sup.state == "stopped":
                    raise _not_running(sup, method, timeout or limit, timeout, shared)
                generation = sup.channel_generation()
                client = sup.current_client
                if client is not None and plugin_gone(client) and await polled(
                        lambda: sup.changed_since(generation, 0.0), _within(deadline, 5.0)):
                    if shared is not None:
                        shared.waited_for_restart()
                    continue
                left = _left(deadline, shared)  # outside: its refusal is no timeout of the call to reword
                try:
                    return await attempt(left)
                except CallTimeout as exc:
                    if shared is not None:
                        shared.timed_out(exc)  # said as the shared deadline's end when that is what it was
                    raise
                except (ClientStateError, PluginDiedError) as exc:
                    if getattr(exc, "sent", isinstance(exc, grpc.RpcError)) or not await polled(
                            lambda: sup.changed_since(generation, 0.0), _within(deadline, 2.0)):
                        raise
            raise _restarting_on_every_try(sup, method)
        finally:
            if shared is not None:
                shared.done()


def _deadline(sup: Any, method: str, timeout: float | None
              ) -> tuple[float, SharedDeadline | None, float | None, float | None]:
    """A gated call's start, the sup.deadline() its steps share (None outside one), its timeout (None: the
    Supervisor's call_timeout, as the wait for a restart is bounded like a call) and its monotonic deadline
    (the scope's in place of call_timeout, a longer one too)."""
    start = time.monotonic()
    shared = SharedDeadline.of(sup, method, start, timeout)
    if timeout is None:
        timeout = sup.call_timeout
    deadline = None if timeout is None else start + timeout
    if shared is not None:
        deadline = shared.cut(deadline)
    return start, shared, timeout, deadline


def _within(deadline: float | None, most: float) -> float:
    """How long to wait for a successor: ``most``, cut to what is left of the call's deadline."""
    return most if deadline is None else min(most, max(deadline - time.monotonic(), 0.0))


def _left(deadline: float | None, shared: SharedDeadline | None = None) -> float | None:
    """The attempt's timeout, read after any wait: what is left of the deadline. None left: the call is
    not sent (grpcio would race the spent deadline against it, and the plugin might run it)."""
    if deadline is None:
        # under a scope of no deadline (math.inf) the call has none either: None would get it call_timeout
        return None if shared is None else NO_DEADLINE
    left = deadline - time.monotonic()
    if left <= 0:
        if shared is not None and shared.binds():
            raise shared.no_time_left()
        raise no_time_left("the call's deadline was spent waiting for the plugin to restart")
    return left


async def polled(check: Callable[[], bool], timeout: float) -> bool:
    """Whether ``check()`` (which must not block) comes true within ``timeout``, asked every 20 ms."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def _restarting_on_every_try(sup: Restarter, method: str) -> CallTimeout:
    return CallTimeout(f"call {method} to plugin {sup.name!r} found the plugin restarting on every"
                       f" try; check the {sup.kind}'s events for why it keeps failing", None,
                       grpc.StatusCode.DEADLINE_EXCEEDED)


def raise_if_ended(sup: Restarter) -> None:
    """Raise what ends any wait for the plugin to run: the restart budget spent, or the Supervisor stopped."""
    sup.raise_if_failed()
    if sup.state == "stopped":
        raise was_stopped(sup.name, sup.kind)


def was_stopped(name: str, kind: str = "Supervisor") -> ClientStateError:
    """The error of any use of a stopped Supervisor (``kind``: or AsyncSupervisor) but stop()."""
    return ClientStateError(f"the {kind} of plugin {name!r} was stopped; make a new one")


def _not_running(sup: Restarter, method: str, waited: float, deadline: float | None,
                 shared: SharedDeadline | None = None) -> BaseException:
    """Why a call that waited for the plugin to run gave up (raised here when the Supervisor ended);
    ``deadline``: the seconds the call (a RetryPolicy's try) had."""
    raise_if_ended(sup)
    if shared is not None and shared.binds():
        return shared.no_time_left()
    what = (f"call {method} to plugin {sup.name!r} waited {waited:.1f}s for the {sup.kind} to restart the"
            f" plugin (restarts so far: {sup.restarts}, last failure: {sup.last_failure})")
    check = f"check the plugin's logs and the {sup.kind}'s events"
    return CallTimeout(f"{what}. Pass a larger timeout= or {check}", None, grpc.StatusCode.DEADLINE_EXCEEDED,
                       what=what, check=check, deadline=deadline)
