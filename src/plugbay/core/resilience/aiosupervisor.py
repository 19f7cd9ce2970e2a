"""AsyncSupervisor: the Supervisor for asyncio code, its stubs on grpc.aio on the caller's event loop.

    async with AsyncSupervisor(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=[...]),
                               retry=RetryPolicy(methods=["Get"])) as sup:
        kv = await sup.dispense("kv_grpc")     # the plugin definition's grpc_client_async() stub
        await kv.put("a", b"1")                # keeps working across restarts

Everything but the calls' I/O is the sync :class:`Supervisor`'s, as AsyncClient's is the
sync Client's: its thread watches the plugin and restarts it, with the same policy,
events, reattach and failover. The stubs are built on one grpc.aio channel that follows
the current Client: each call goes to that Client's own grpc.aio connection (made when a
call first needs it, closed once a restart replaced its Client), with the Client's typed
errors. The layers run on the event loop: ``retry`` and ``breaker`` (as AsyncCallLayers),
then the ready gate, which holds a call while the plugin restarts (within its deadline)
and sends again a call that never left a dead plugin. Blocking steps (start, stop) run
on threads of their own, never on the loop nor on its default executor (the user's work
there cannot hold up a stop); a wait for the plugin to run is woken on the loop by the
Supervisor's changes of state (plugbay.core.resilience.wakeups).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self, overload

import grpc
import grpc.aio

from plugbay.core.host.aiochannel import AioManagedChannel, WrongLoop, off_loop
from plugbay.core.host.aioclient import Dispensed, owner_cancelled, refuse_in_forked_child, to_end
from plugbay.core.host.channel import ManagedChannel
from plugbay.core.host.client import Client
from plugbay.core.host.typedstub import StubT, check_stub_type, checked_stub
from plugbay.core.resilience.calldeadline import CallDeadline, scoped_hook_async
from plugbay.core.resilience.aiofollowing import FollowingChannel
from plugbay.core.resilience.calls import AsyncCallLayer, chain_async, wait_timeout
from plugbay.core.resilience.circuit import CircuitBreaker
from plugbay.core.resilience.readygate import ReadyGate, was_stopped
from plugbay.core.resilience.restart import RestartPolicy, SupervisorEvent
from plugbay.core.resilience.retry import RetryPolicy
from plugbay.core.resilience.sources import ConfigSource, check_policies, check_settings, plugin_named
from plugbay.core.resilience.supervisor import Supervisor
from plugbay.core.resilience.supervisorview import SupervisorMetrics
from plugbay.errors import ClientStateError


class AsyncSupervisor:
    """Keeps one plugin running, for asyncio code. See the module docstring.

    Takes what :class:`Supervisor` takes (a ClientConfig, a RemoteConfig or a factory).
    Use it as ``async with AsyncSupervisor(...) as sup:``; one event loop per supervisor."""

    ready_gated = True  # install() refuses it: retry= and breaker= go outside its ReadyGate

    def __init__(self, config: ConfigSource, *, restart: RestartPolicy | None = None,
                 retry: RetryPolicy | None = None, breaker: CircuitBreaker | None = None,
                 reattach: Any = None, health_interval: float | None = 2.0, health_timeout: float = 2.0,
                 unhealthy_grace: float = 4.0, on_event: Callable[[SupervisorEvent], None] | None = None,
                 name: str | None = None) -> None:
        check_policies(restart, retry, breaker, "run_async", "AsyncSupervisor")
        check_settings("AsyncSupervisor", health_interval, health_timeout, unhealthy_grace, on_event)
        self._on_event = on_event
        self._sup = Supervisor(config, restart=restart, reattach=reattach,
                               health_interval=health_interval, health_timeout=health_timeout,
                               unhealthy_grace=unhealthy_grace, on_event=self._event, name=name)
        self._sup.kind = "AsyncSupervisor"  # what its errors call it: the one the user made
        # the breaker also goes to the sync Supervisor: it is reset there when a new plugin is adopted
        self._sup.breaker = breaker
        self.retry, self.breaker = retry, breaker
        self._executor = ThreadPoolExecutor(2, thread_name_prefix=f"plugbay-async-sup-{self._sup.name}")
        # ... and the stop on one of its own, which nothing can queue ahead of (a start holds the executor)
        self._stopper = ThreadPoolExecutor(1, thread_name_prefix=f"plugbay-async-sup-stop-{self._sup.name}")
        self._stop_begun: concurrent.futures.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._switch: FollowingChannel | None = None
        self._channel: AioManagedChannel | None = None
        self._dispensed = Dispensed(f"the AsyncSupervisor of plugin {self.name!r}")
        self._starting: asyncio.Future[None] | None = None
        self._stopped = False
        self._owner_cancelled = False  # the task that began start() was cancelled (so the start was)

    # --- what the sync Supervisor knows ------------------------------------------------

    @property
    def sync_supervisor(self) -> Supervisor:
        """The sync Supervisor underneath (its thread restarts the plugin)."""
        return self._sup

    @property
    def name(self) -> str:
        return self._sup.name

    @property
    def state(self) -> str:  # a SupervisorState (see waiting.py: why not that Literal)
        return self._sup.state

    @property
    def events(self) -> list[SupervisorEvent]:
        return self._sup.events  # already a copy

    @property
    def current_client(self) -> Client | None:
        return self._sup.current_client

    def metrics(self) -> SupervisorMetrics:
        return self._sup.metrics()

    @property
    def channel(self) -> AioManagedChannel:
        """The grpc.aio channel the stubs use: it follows the plugin across restarts."""
        if self._channel is None:
            raise ClientStateError(f"AsyncSupervisor of {self.name!r} is not started; await start() first")
        return self._channel

    # --- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except WrongLoop:
            raise  # a refusal: the AsyncSupervisor is another loop's, in use there, and stays as it was
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start (or reattach to) the plugin, off the loop; errors of this first start are raised.
        Safe to await again, from several tasks at once: one start, which the others wait for.

        The task that began the start owns it: cancelled, it stops the AsyncSupervisor (and the
        plugin being started) before the cancel goes on, as AsyncClient's does. Another task's
        cancel ends only its own wait."""
        refuse_in_forked_child("AsyncSupervisor")
        self._check_not_stopped()
        if self._channel is not None:
            self._check_loop(self._channel)
            return
        if self._starting is not None:
            if self._starting.get_loop() is not asyncio.get_running_loop():  # asyncio's own error is untyped
                raise WrongLoop(f"the AsyncSupervisor of plugin {self.name!r} is being started on another event"
                                " loop; use it from that loop (one AsyncSupervisor per event loop; a sync"
                                " Supervisor serves any thread)", None, grpc.StatusCode.FAILED_PRECONDITION,
                                sent=False)
            try:
                await asyncio.shield(self._starting)
            except Exception as exc:
                if self._owner_cancelled:  # not a stop() of the caller's: the start's owner went away
                    raise self._owner_cancelled_error() from exc
                raise
            if self._owner_cancelled:  # the start ended well, but its owner's cancel came before it resumed
                raise self._owner_cancelled_error()
            return
        self._starting = starting = asyncio.ensure_future(self._start())
        starting.add_done_callback(self._forget_failed_start)
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            # The start goes on in its thread: left alone, it would run and supervise a plugin nobody holds.
            self._owner_cancelled = True
            await to_end(asyncio.ensure_future(self._stop_cancelled_start(starting)))
            raise

    async def _stop_cancelled_start(self, starting: asyncio.Future[None]) -> None:
        await asyncio.wrap_future(self._begin_stop())  # ends the plugin being started, or the one it adopted
        await asyncio.wait([starting])  # its error (stopped while starting) was taken by _forget_failed_start
        await self.stop()  # and now the channels the start may have made before the stop

    def _forget_failed_start(self, start: asyncio.Future[None]) -> None:
        # a failed start may be tried again, as Supervisor.start() may: not answered with its error
        if (start.cancelled() or start.exception() is not None) and self._starting is start:
            self._starting = None

    def _owner_cancelled_error(self) -> ClientStateError:
        return owner_cancelled(f"the AsyncSupervisor of plugin {self.name!r}", "AsyncSupervisor",
                               "stops the AsyncSupervisor and the plugin it was starting")

    def _check_not_stopped(self) -> None:
        if self._stopped:
            raise was_stopped(self.name, "AsyncSupervisor")

    async def _start(self) -> None:
        await off_loop(self._executor, self._sup.start)
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._switch = FollowingChannel(self._sup, loop, self._executor)
        managed = self._sup.channel
        assert isinstance(managed, ManagedChannel)
        channel = AioManagedChannel(self._switch, managed, loop, self._executor, "AsyncSupervisor")
        layers: list[AsyncCallLayer] = [x for x in (self.retry, self.breaker) if x is not None]
        channel.call_hook = scoped_hook_async(self._sup, self.retry, chain_async([*layers, ReadyGate(self._sup)]))
        self._channel = channel

    async def wait_running(self, timeout: float) -> bool:
        """Whether the plugin runs within ``timeout`` (raises once the restart budget is spent; False
        once stopped). Woken on the loop by the Supervisor's changes of state: it holds no thread, so
        any number of tasks may wait at once, each within its own timeout."""
        seconds = wait_timeout(timeout, "AsyncSupervisor.wait_running()")
        running = False

        def ended() -> bool:
            nonlocal running
            running = self._sup.wait_running(0)  # never blocks; raises once the budget is spent
            return running or self._sup.state == "stopped"

        await self._sup.until_async(ended, seconds)
        return running

    def deadline(self, seconds: float | None = None) -> CallDeadline:
        """``with sup.deadline(seconds):`` (a plain ``with``, in the coroutine) as Supervisor.deadline(): tasks
        made inside and asyncio.to_thread() carry it."""
        return self._sup.deadline(seconds)

    @overload
    async def dispense(self, name: str, stub_type: None = None) -> Any: ...
    @overload
    async def dispense(self, name: str, stub_type: type[StubT]) -> StubT: ...

    async def dispense(self, name: str, stub_type: type[Any] | None = None) -> Any:
        """The plugin's async stub on :attr:`channel` (once per name): it survives restarts. Its broker is
        the Supervisor's, which follows the plugin too; on the event loop it does not wait for a restart
        (see plugbay.core.resilience.followbroker). Once the Supervisor gave up (RestartBudgetExhaustedError)
        or was stopped (ClientStateError) it is refused, a stub dispensed before included, as
        Supervisor.dispense() refuses it. Given ``stub_type``, typed as one, as AsyncClient.dispense()."""
        check_stub_type(stub_type, name, type(self).__name__, "grpc_client_async")
        self._sup.raise_if_failed()  # first, as the sync one: after giving up, stopped or not, it says so
        self._check_not_stopped()
        channel = self.channel
        self._check_loop(channel)
        stub = await self._dispensed.get(name, lambda: self._build(name, channel))
        return checked_stub(stub, stub_type, name, type(self).__name__, "grpc_client_async")

    def _check_loop(self, channel: AioManagedChannel) -> None:
        """Refuse a start() or dispense() on another loop than the one that started it: a stub made there
        would fail every call with WrongLoop."""
        wrong = channel.off_its_loop(f"the AsyncSupervisor of plugin {self.name!r} was started on another event"
                                     " loop, and its calls run only there")
        if wrong is not None:
            raise wrong

    async def _build(self, name: str, channel: AioManagedChannel) -> Any:
        plugin, broker = await off_loop(self._executor, self._plugin_and_broker, name)
        return plugin.grpc_client_async(broker, channel)

    def _plugin_and_broker(self, name: str) -> tuple[Any, Any]:
        client = self._sup.client  # raises while restarting or after giving up, saying so
        return plugin_named(client, name), self._sup.broker

    async def stop(self) -> None:
        """Stop watching, kill the plugin and close the connections. Idempotent. A cancel of the
        awaiting task does not cut it short (the plugin would outlive it): it is passed on once all is stopped."""
        cancelled = False
        try:
            cancelled = await to_end(asyncio.wrap_future(self._begin_stop()))
        finally:
            self._executor.shutdown(wait=False)
            if self._channel is not None:
                cancelled |= await to_end(asyncio.ensure_future(self._channel.aclose()))
            if self._switch is not None:
                cancelled |= await to_end(asyncio.ensure_future(self._switch.close()))
        if cancelled:
            raise asyncio.CancelledError()

    def _begin_stop(self) -> concurrent.futures.Future[None]:
        """The sync Supervisor's stop, under way on the stop thread: begun once (tried again if it failed),
        so a second stop() awaits the first rather than a thread the user's work may hold."""
        self._stopped = True
        begun = self._stop_begun
        if begun is None or (begun.done() and begun.exception() is not None):
            begun = self._stopper.submit(self._sup.stop)  # shut down only once a stop succeeded
            begun.add_done_callback(self._after_stop)
            self._stop_begun = begun
        return begun

    def _after_stop(self, stop: concurrent.futures.Future[None]) -> None:
        if not stop.cancelled() and stop.exception() is None:
            self._stopper.shutdown(wait=False)  # its thread ends: nothing is left to stop

    def _event(self, event: SupervisorEvent) -> None:
        """On the Supervisor's thread: pass it on; a replaced Client's connection closes on the loop."""
        if self._on_event is not None:
            self._on_event(event)
        loop, switch = self._loop, self._switch
        # Not at "failure": the old Client is not yet killed, and a call its closed connection ended
        # would come out as a bare CANCELLED instead of the sync side's PluginRestarted.
        if loop is not None and switch is not None and event.kind in ("restarting", "restarted", "stopped",
                                                                      "gave_up"):
            try:
                loop.call_soon_threadsafe(switch.follow)
            except RuntimeError:  # the loop is closed: its connections went with it
                pass
