"""Supervised plugins: restart on death or lost health, stubs that survive restarts.

    with Supervisor(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=[...]),
                    restart=RestartPolicy(max_restarts=5, window=60)) as sup:
        kv = sup.dispense("kv_grpc")   # keeps working across restarts
        kv.put("a", b"1")

The Supervisor owns one Client at a time. Its stubs are built on the Supervisor's own
ManagedChannel, whose underlying channel is swapped to each new Client's channel, and on a
broker that follows the current Client's broker, so the stubs a user holds never go stale.
A plugbay-supervisor-* thread notices a failure (the plugin exited, or its health stayed bad
for ``unhealthy_grace`` seconds), kills the old Client, waits a backoff, starts a new one
from the config (or the factory, which may return a different config each time: failover),
and swaps it in. Unary calls made while it restarts wait for it (within their deadline);
calls in flight when the plugin died fail with PluginDiedError unless a RetryPolicy marks
them safe to repeat. When the restart budget is spent, every call raises
RestartBudgetExhaustedError.

``reattach=`` first tries to reattach to a plugin a previous host left running
(Client reattach); if that fails, the Supervisor starts a fresh plugin. Given a ClientConfig
without cmd=, it can only attach: a failed reattach is a ConfigError, and once that plugin
fails the Supervisor gives up at once (CannotRestartError) rather than try restarts that cannot work.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Self, overload

from plugbay.core.resilience.calldeadline import CallDeadline, scoped_hook
from plugbay.core.resilience.circuit import CircuitBreaker
from plugbay.core.resilience.followbroker import FollowingBroker
from plugbay.core.host.client import Client, ClientConfig
from plugbay.core.resilience.healthwatch import UNREACHABLE, HealthWatcher
from plugbay.core.host.live import RESTARTERS, LoopHandoff
from plugbay.core.transport import aioloop
from plugbay.core.host.reattach import ReattachConfig
from plugbay.core.host.typedstub import StubT, check_stub_type, checked_stub
from plugbay.core.resilience.endedcalls import mark_restarting, mark_stopping
from plugbay.core.resilience.readygate import ReadyGate, SupervisedChannel, raise_if_ended, was_stopped
from plugbay.core.resilience.calls import CallLayer, chain
from plugbay.core.resilience.restart import (EventKind, FailureRun, RestartBudget, RestartPolicy, SupervisorEvent,
                                             record_event)
from plugbay.core.resilience.retry import RetryPolicy
from plugbay.core.resilience.sources import ClientMaker as ClientMaker  # re-exported
from plugbay.core.resilience.sources import (ConfigSource, FailureCheck, check_policies, check_settings, check_source,
                                             first_client, new_client, plugin_named,
                                             stopped_while_starting)
from plugbay.core.resilience.wakeups import StateCondition
from plugbay.core.resilience.supervisorview import SupervisorView
from plugbay.core.resilience.waiting import FAILED, RESTARTING, RUNNING, STARTING, STOPPED

_log = logging.getLogger("plugbay.supervisor")


class Supervisor(SupervisorView):
    """Keeps one plugin running. See the module docstring."""
    ready_gated = True  # install() refuses it: retry= and breaker= go outside its ReadyGate

    def __init__(self, config: ConfigSource, *, restart: RestartPolicy | None = None,
                 retry: RetryPolicy | None = None, breaker: CircuitBreaker | None = None,
                 reattach: ReattachConfig | None = None, health_interval: float | None = 2.0,
                 health_timeout: float = 2.0, unhealthy_grace: float = 4.0,
                 on_event: Callable[[SupervisorEvent], None] | None = None,
                 name: str | None = None) -> None:
        check_source(config, reattach)
        self.health_interval, self.health_timeout, self.unhealthy_grace = check_settings(
            "Supervisor", health_interval, health_timeout, unhealthy_grace, on_event)
        check_policies(restart, retry, breaker, "run", "Supervisor")
        self._source = config
        self.restart_policy = restart or RestartPolicy()
        self.retry = retry
        self.breaker = breaker
        self._reattach = reattach
        self.on_event = on_event
        self._named = name is not None
        self.name = name or (config.name if isinstance(config, ClientConfig) and config.name else "plugin")
        self._cond = StateCondition()  # wakes the AsyncSupervisor's waiters too
        self._start_lock = threading.Lock()  # one start() at a time: a second would start a second plugin
        self._state = STARTING
        self._client: Client | None = None
        self._watcher: HealthWatcher | None = None
        self._channel: SupervisedChannel | None = None
        self._stop = threading.Event()  # halt() or stop(): no more watching and restarting
        self._stopping = False  # stop() has begun: the plugin is ending too (STOPPED is said when it has)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._budget = RestartBudget()
        self._failure_run = FailureRun()
        self._dispensed: dict[str, Any] = {}
        self._broker = FollowingBroker(self)
        self._starting: Client | None = None
        self._handoff = LoopHandoff()  # a stop() asked on the shared loop thread runs on a thread of its own
        # start() to halt()/stop() or giving up: else each restart's old Client ends the shared loop, the new makes one
        self._lease: aioloop.Lease | None = None
        # appended by the Supervisor's thread while callers read: they get snapshots (SupervisorView.events)
        self._events: collections.deque[SupervisorEvent] = collections.deque(maxlen=500)
        self.restarts = self.failures = 0
        self.last_failure: str | None = None

    # --- lifecycle (what it tells of itself: SupervisorView) ---------------------------

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start (or reattach to) the plugin; errors of this first start are raised as they are.
        From several threads at once: one start, which the others wait for."""
        with self._start_lock:
            self._start()

    def _start(self) -> None:
        if self._state == STOPPED:
            raise was_stopped(self.name, self.kind)
        if self._channel is not None:
            return
        with self._cond:
            self._state = STARTING if self._state == FAILED else self._state  # not over a stop()'s STOPPED
            if self._lease is None and not self._stop.is_set():  # else halt()'s _free_loop may have passed
                self._lease = aioloop.shared().acquire()
        try:
            client = first_client(self._source, self._reattach, self._event, self._first_starting, self._stop.is_set,
                                  self.kind)
        except BaseException as exc:
            if self._stop.is_set():  # stop() ended this start: the plugin did not fail
                raise stopped_while_starting(self.name, self.kind) from exc
            self._start_failed(exc)
            raise
        try:
            if not self._named:
                self.name = client.name
            if self.breaker is not None and self.breaker.name == "plugin" and self.name != "plugin":
                self.breaker.name = self.name  # the default name, as install() names it: its errors name this plugin
            self._channel = SupervisedChannel(self, client.channel, client.config.call_timeout)
            layers: list[CallLayer] = [x for x in (self.retry, self.breaker) if x is not None]
            self._channel.call_hook = scoped_hook(self, self.retry, chain([*layers, ReadyGate(self)]))
            if not self._adopt(client):  # stop() came while it started
                raise stopped_while_starting(self.name, self.kind)
            self._thread = threading.Thread(target=self._monitor, name=f"plugbay-supervisor-{self.name}",
                                            daemon=True)
            RESTARTERS.add(self)
            self._thread.start()
        except BaseException as exc:
            self._start_failed(exc, client)
            raise

    @overload
    def dispense(self, name: str, stub_type: None = None) -> Any: ...
    @overload
    def dispense(self, name: str, stub_type: type[StubT]) -> StubT: ...

    def dispense(self, name: str, stub_type: type[Any] | None = None) -> Any:
        """The plugin's stub on the Supervisor's channel: it survives restarts. Once the Supervisor gave
        up (RestartBudgetExhaustedError) or was stopped (ClientStateError) it is refused, a stub
        dispensed before included, as AsyncSupervisor.dispense() refuses it. Given ``stub_type``, typed
        as one, as Client.dispense()."""
        check_stub_type(stub_type, name, type(self).__name__, "grpc_client")
        raise_if_ended(self)
        if name not in self._dispensed:
            self._dispensed[name] = plugin_named(self.client, name).grpc_client(self._broker, self.channel)
        return checked_stub(self._dispensed[name], stub_type, name, type(self).__name__, "grpc_client")

    def deadline(self, seconds: float | None = None) -> CallDeadline:
        """``with sup.deadline(seconds):`` one deadline (None: the config's call_timeout) that every step of the
        calls inside shares, a brokered call's broker uses and the call itself: see plugbay.core.resilience
        .calldeadline. Without it each step that waits for a restart has call_timeout of its own."""
        return CallDeadline(self, self.name, self.kind, seconds, self.call_timeout)

    def stop(self) -> None:
        """Stop watching and kill the plugin. Idempotent. On the shared loop thread (a plugin's log
        handler) it returns at once and ``plugbay-stop-<name>`` does it, as Client.kill() does there."""
        self._stopping = True
        self._stop.set()
        self._wake.set()
        if self._handoff.start(f"plugbay-stop-{self.name}", self.stop, self._state == STOPPED):
            return
        self.halt()
        RESTARTERS.discard(self)
        self._drop_current(stopping=True)
        if self._channel is not None:
            self._channel.detach_stopped()
        with self._cond:
            was = self._state
            self._state = STOPPED
            self._cond.notify_all()
        if was != STOPPED:
            self._event("stopped", "")
        self._handoff.join()

    def halt(self) -> None:
        """Stop watching and restarting, leaving the current plugin as it is.

        cleanup_clients() (at interpreter exit) does this before it ends the Clients,
        so no Supervisor starts again a plugin the cleanup just killed. stop() does more.
        """
        self._stop.set()
        self._wake.set()
        self._free_loop()  # no restart needs it now: the current plugin's own end may end the loop
        if aioloop.shared().on_loop():
            return  # the monitor's start waits on this loop; it ends by itself, adopting nothing
        with self._cond:  # see _first_starting
            starting = self._starting
        if starting is not None:  # a start in progress ends now (a reattach's plugin is left running)
            try:
                starting.close() if starting.config.reattach is not None else starting.kill()
            except Exception as exc:
                _log.debug("stopping the plugin being started: %s", exc)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(30.0)

    # --- internals --------------------------------------------------------------------

    def _adopt(self, client: Client) -> bool:
        """Make ``client`` the current one; False (and nothing done) once stop() was asked."""
        self._broker.follow(client)  # before calls reach it: a call may name an id served on the old one
        with self._cond:
            # Checked under the lock _drop_current takes: either stop() finds this client and kills
            # it, or this sees the stop and the caller does.
            if self._stop.is_set():
                return False
            self._client = client
            assert self._channel is not None
            self._channel.call_timeout = client.config.call_timeout  # a factory's config may change it
            self._channel.replace(client.channel)
            if self.health_interval is not None:
                self._watcher = HealthWatcher(client.channel, interval=self.health_interval,
                                              timeout=self.health_timeout,
                                              on_change=lambda old, new, why: self._wake.set(),
                                              name=self.name).start()
            self._state = RUNNING
            self._failure_run.running()
            self._cond.notify_all()
        if self.breaker is not None:
            self.breaker.reset("the plugin was (re)started")
        return True

    def _drop_current(self, restarting: str | None = None, stopping: bool = False) -> None:
        with self._cond:
            watcher, self._watcher = self._watcher, None
            client, self._client = self._client, None
        # restarted because it stopped answering: not asked to Shutdown; killed outright if frozen (Client)
        unanswering = restarting is not None and watcher is not None and watcher.state == UNREACHABLE
        if watcher is not None:
            watcher.stop()
        if client is not None:
            if restarting is not None:
                mark_restarting(client, self.name, restarting, self.kind, lambda: self._stopping, self.can_restart)
            elif stopping:
                mark_stopping(client, self.name, self.kind)
            client.kill_unanswering() if unanswering else client.kill()

    def _event(self, kind: EventKind, detail: str) -> None:
        record_event(self._events, self.on_event, SupervisorEvent(kind, detail, self.restarts, time.time()), self.name)

    def _monitor(self) -> None:
        try:
            self._watch()
        except Exception as exc:  # a thread that died silently left the state "restarting" for ever
            _log.exception("supervisor of plugin %s: its restart loop failed", self.name)
            if not self._stop.is_set():
                self._drop_current()
                self.last_failure = (f"its restart loop failed: {type(exc).__name__}: {exc}"
                                     f" (after: {self.last_failure})")
                self._give_up(loop_failed=True)

    def _watch(self) -> None:
        check = FailureCheck(self._event)
        while not self._stop.is_set():
            self._wake.wait(0.25)
            self._wake.clear()
            if self._stop.is_set():
                return
            client = self._client
            if client is None:
                return
            reason = check.failure(client, self._watcher, self.unhealthy_grace)
            if reason is not None:
                self._recover(reason)

    def _recover(self, reason: str) -> None:
        self._failure_run.failed(self.restart_policy)
        self.failures += 1
        self.last_failure = reason
        self._event("failure", reason)
        with self._cond:
            if self._stop.is_set():  # stop() from on_event: it ended everything and said STOPPED
                return
            self._state = RESTARTING
            self._cond.notify_all()
        self._drop_current(reason)
        if not self.can_restart:  # nothing to start in its place: no try could work, so none spends the budget
            self._give_up(cannot_restart=True)
            return
        policy = self.restart_policy
        while not self._stop.is_set():
            if self._budget.spent(policy):
                self._give_up()
                return
            if self._stop.wait(self._failure_run.next_backoff(policy)):
                return
            self._budget.record()
            self.restarts += 1
            self._event("restarting", f"restart {self.restarts} after: {self.last_failure}")
            client: Client | None = None
            try:
                client = self._starting = new_client(self._source, self._reattach, self.kind)
                if self._stop.is_set():
                    client.kill()
                    return
                client.start()
            except Exception as exc:
                if client is not None:
                    client.kill()
                if self._stop.is_set():  # stop() ended this start: the plugin did not fail
                    return
                self.last_failure = f"restart failed: {type(exc).__name__}: {exc}"
                self._event("restart_failed", self.last_failure)
                continue
            finally:
                self._starting = None
            if not self._adopt(client):
                client.kill()
                return
            self._event("restarted", f"{client.handshake.network}:{client.handshake.address}")
            return

    def _first_starting(self, client: Client | None) -> None:
        with self._cond:  # with halt()'s read: a stop either sees this client, or is seen here
            if client is not None and self._stop.is_set():
                raise stopped_while_starting(self.name, self.kind)
            self._starting = client

    def _start_failed(self, exc: BaseException, started: Client | None = None) -> None:
        """The first start failed: say so in state and metrics (start() may be called again). A
        ``started`` plugin is ended (nothing else would), so that a start() again begins from scratch."""
        if started is not None:
            RESTARTERS.discard(self)
            self._drop_current()
            started.kill()
            self._channel = self._thread = None
        self._free_loop()
        with self._cond:
            if self._stop.is_set():  # stop() came meanwhile: it says STOPPED
                return
            self._state = FAILED
            self.failures += 1
            self.last_failure = f"start failed: {type(exc).__name__}: {exc}"
            self._cond.notify_all()
        self._event("start_failed", self.last_failure)

    def _give_up(self, loop_failed: bool = False, cannot_restart: bool = False) -> None:
        why = self._budget.exhaust(self.name, self.restart_policy.window, self.last_failure or "unknown",
                                   self.restarts if loop_failed else None, self.kind, cannot_restart)
        with self._cond:
            self._state = FAILED
            self._client = None
            self._cond.notify_all()
        # the event before the loop's end, which may wait for its thread: one who sees FAILED finds it too
        self._event("gave_up", why)
        self._free_loop()

    def _free_loop(self) -> None:
        """Give back the hold on the shared loop (once; start() after a failed start takes it again)."""
        with self._cond:
            lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()
