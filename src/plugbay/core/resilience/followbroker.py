"""The broker a Supervisor's stubs are built with: it follows the plugin across restarts.

A stub gets its broker once, when it is built (``grpc_client(broker, channel)``), but
each Client has a broker of its own, closed when that Client is killed. A stub built
on one of them would broker nothing after the first restart, and tell its user to
start a new Client, which a Supervisor's user cannot do. So the Supervisor's stubs
get a FollowingBroker, which hands each use to the broker of the Client current at
that moment, as the Supervisor's channel does with calls.

A use that finds the plugin restarting (or already dead) waits for its successor
within the call timeout, as a unary call does (inside a ``sup.deadline()``, within what
is left of the one deadline the call's steps share: calldeadline). On an event loop's
thread it does not wait, which would stall the loop (the asyncio counter stub asks for
an id there): it raises BrokerClosedError saying the plugin is being restarted.

A served id follows the plugin too: when the Supervisor adopts a new Client, each id
served and not yet stopped is served again on its broker (a stub that served its
callback just before the plugin died sends the call naming that id to the successor,
which must find it), and stop_serving() stops it on every broker that serves it.

Ids come from a counter of its own, increasing across the brokers (a new Client's
broker counts from 1 again), so they stay unique without keeping the ids handed out:
only served ids are kept, until stop_serving().
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from plugbay.core.broker.broker import GRPCBroker
from plugbay.core.broker.brokertransport import BrokerTransport
from plugbay.core.host.client import Client
from plugbay.core.resilience.calldeadline import CallDeadline, scope_of
from plugbay.core.resilience.readygate import Restarter, plugin_gone, raise_if_ended
from plugbay.errors import BrokerClosedError, BrokerTimeoutError, RestartBudgetExhaustedError

T = TypeVar("T")
_log = logging.getLogger("plugbay.supervisor")


@dataclass(eq=False)
class _Served:
    """A served id: what serves it again on a successor's broker, and the brokers serving it."""
    register: Callable[[grpc.Server], None]
    loop: asyncio.AbstractEventLoop | None
    brokers: set[GRPCBroker] = field(default_factory=set)


class FollowingBroker(GRPCBroker):
    """A GRPCBroker whose every use goes to the Supervisor's current Client's broker. See the module docstring.

    close() closes nothing: the Supervisor closes each Client's broker when it ends that Client."""

    def __init__(self, sup: Restarter) -> None:
        super().__init__(BrokerTransport(), "host")  # its own state stays unused: nothing is brokered here
        self._sup = sup
        self._ids_lock = threading.Lock()
        self._last_id = 0
        self._live: dict[int, _Served] = {}  # served ids, until stop_serving()

    def next_id(self) -> int:
        # the current broker's next_id() readies its stream (the id goes to the plugin); past its own
        # ids, so that ids stay unique on this broker and across the brokers, served or not
        id = self._use("hand out a broker id", lambda broker: broker.next_id(), resend=True)
        with self._ids_lock:
            self._last_id = max(self._last_id + 1, id) & 0xFFFFFFFF
            return self._last_id

    def accept_and_serve(self, id: int, register: Callable[[grpc.Server], None], *,
                         loop: asyncio.AbstractEventLoop | None = None) -> None:
        served = _Served(register, loop)
        with self._ids_lock:
            self._live[id] = served  # from now on follow() serves it on a successor too

        try:
            # nothing is served when it fails: serving the id on the successor instead is safe
            self._use(f"serve broker id {id}", lambda broker: self._serve_on(broker, id, served), resend=True)
        except BaseException:
            if self._live.get(id) is served:
                self.stop_serving(id)
            raise

    def stop_serving(self, id: int) -> None:
        with self._ids_lock:
            served = self._live.pop(id, None)
            brokers = list(served.brokers) if served is not None else []
        if served is None:  # an id this broker did not serve: the current plugin's, if any
            client = self._sup.current_client
            brokers = [client.broker] if client is not None else []
        for broker in brokers:  # a closed broker stopped its servers already: a no-op there
            broker.stop_serving(id)

    def follow(self, client: Client) -> None:
        """Serve every live id on ``client``'s broker too; the Supervisor calls it before adopting ``client``."""
        broker = client.broker
        with self._ids_lock:
            live = list(self._live.items())
        for id, served in live:
            try:
                self._serve_on(broker, id, served)
            except Exception as exc:  # that callback fails on the new plugin as it would have on the old
                _log.debug("could not serve broker id %d again on the restarted plugin: %s", id, exc)

    def dial(self, id: int, timeout: float | None = None) -> grpc.Channel:
        # not sent again to a successor: the id was the old plugin's, and went with it
        what = f"dial broker id {id}"
        return self._use(what, lambda broker: self._dial_within(broker, id, timeout, what), resend=False)

    def close(self, *, wait: bool = True, within: float | None = None) -> None:
        """Nothing to close here (see the class docstring)."""

    @property
    def closed(self) -> bool:
        """True once no plugin will come any more: the Supervisor was stopped or gave up."""
        if self._sup.state == "stopped":
            return True
        try:
            self._sup.raise_if_failed()
        except RestartBudgetExhaustedError:
            return True
        return False

    @property
    def lost_reason(self) -> str | None:
        client = self._sup.current_client
        if client is None:
            return f"plugin {self._sup.name!r} is not running now ({self._sup.state})"
        return client.broker.lost_reason

    # --- internals --------------------------------------------------------------------

    def _serve_on(self, broker: GRPCBroker, id: int, served: _Served) -> None:
        """Serve ``served`` as ``id`` on ``broker``, unless it serves there already (the stub's own serve and
        follow() may both get to a successor); undone if a stop_serving(id) ran alongside."""
        if not self._claim(served, broker):
            return
        try:
            broker.accept_and_serve(id, served.register, loop=served.loop)
        except BaseException:
            with self._ids_lock:
                served.brokers.discard(broker)
            raise
        self._unless_stopped(id, served, broker)

    def _claim(self, served: _Served, broker: GRPCBroker) -> bool:
        """Whether the caller is to serve ``served`` on ``broker`` (once per broker, while live)."""
        with self._ids_lock:
            if broker in served.brokers:
                return False
            served.brokers = {b for b in served.brokers if not b.closed}
            served.brokers.add(broker)
            return True

    def _unless_stopped(self, id: int, served: _Served, broker: GRPCBroker) -> None:
        """Undo a serve that a stop_serving(id) running alongside it did not see."""
        with self._ids_lock:
            stopped = self._live.get(id) is not served
        if stopped:
            broker.stop_serving(id)

    def _dial_within(self, broker: GRPCBroker, id: int, timeout: float | None, what: str) -> grpc.Channel:
        """broker.dial(), its wait cut to what is left of a sup.deadline() in effect."""
        scope = scope_of(self._sup)
        left = None if scope is None else scope.left()
        if scope is None or left is None or not isinstance(timeout, (int, float, type(None))):
            return broker.dial(id, timeout)  # a bad timeout= is the broker's to refuse
        began = time.monotonic()
        if left <= 0:
            raise BrokerTimeoutError(f"could not {what}: {scope.ran_out(what, began)}")
        try:
            return broker.dial(id, min(broker.dial_timeout if timeout is None else timeout, left))
        except BrokerTimeoutError as exc:
            remaining = scope.left()
            if remaining is None or remaining > 0:
                raise  # the dial's own timeout, shorter than the deadline
            raise BrokerTimeoutError(f"could not {what}: {scope.ran_out(what, began)}") from exc

    def _use(self, what: str, op: Callable[[GRPCBroker], T], resend: bool) -> T:
        sup = self._sup
        began = time.monotonic()
        scope = scope_of(sup)  # a sup.deadline() shared with the call's other steps, else call_timeout of its own
        if scope is not None:
            deadline = scope.deadline
        else:
            deadline = None if sup.call_timeout is None else began + sup.call_timeout
        try:
            for _ in range(sup.max_restarts + 2):
                client = self._current(what, deadline, scope, began)
                try:
                    return op(client.broker)
                except BrokerClosedError as exc:
                    if sup.current_client is client and not plugin_gone(client):
                        raise  # the plugin runs on and closed its broker: the broker's own word
                    if not resend or _on_event_loop():
                        raise BrokerClosedError(
                            f"plugin {sup.name!r} died or was restarted by its {sup.kind} while this host was"
                            f" about to {what}; what the old plugin had brokered went with it. Call again: the"
                            " stub uses the new plugin") from exc
            raise BrokerTimeoutError(f"could not {what}: plugin {sup.name!r} was restarting on every try; check"
                                     f" the {sup.kind}'s events for why it keeps failing")
        finally:
            if scope is not None and scope.ran_out_in != what:
                scope.took(what, began)

    def _current(self, what: str, deadline: float | None, scope: CallDeadline | None, began: float) -> Client:
        """The running Client, waited for while the plugin restarts (not on an event loop's thread)."""
        sup = self._sup
        for _ in range(sup.max_restarts + 2):
            sup.raise_if_failed()
            generation = sup.channel_generation()
            client = sup.current_client
            if client is not None and not plugin_gone(client):
                return client
            raise_if_ended(sup)
            if scope is not None:
                scope.waited_for_restart()
            if _on_event_loop():
                why = f" (last failure: {sup.last_failure})" if client is None and sup.last_failure else ""
                raise BrokerClosedError(
                    f"plugin {sup.name!r} is not running: it is being restarted by its {sup.kind}{why}, so this"
                    f" host cannot {what} now. On an event loop this does not wait for the restart: await the"
                    " supervisor's wait_running() and call again (from a thread it waits)")
            if client is not None and not sup.changed_since(generation, _left(deadline, 5.0)):
                return client  # the Supervisor has not seen the death yet: the broker says what it finds
            if not sup.wait_running(_left(deadline, 3600.0)):
                raise_if_ended(sup)
                if scope is not None:
                    raise BrokerTimeoutError(f"could not {what}: {scope.ran_out(what, began)}")
                raise BrokerTimeoutError(
                    f"could not {what}: waited for the {sup.kind} to restart plugin {sup.name!r} (restarts so"
                    f" far: {sup.restarts}, last failure: {sup.last_failure}). Raise the config's call_timeout"
                    f" or check the plugin's logs and the {sup.kind}'s events")
        raise BrokerTimeoutError(f"could not {what}: plugin {sup.name!r} was restarting on every try; check"
                                 f" the {sup.kind}'s events for why it keeps failing")


def _left(deadline: float | None, most: float) -> float:
    return most if deadline is None else min(most, max(deadline - time.monotonic(), 0.0))


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True

