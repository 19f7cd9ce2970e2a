"""The host side for asyncio: a Client whose calls run on grpc.aio, on the caller's event loop.

Everything but the calls' I/O is the sync :class:`~plugbay.core.host.client.Client`:
the same config and checks, runner, handshake, AutoMTLS, broker, stdio, exit
watch and kill. Its blocking steps (start, kill, close: launching a container,
a kill's grace; judging a failure by the plugin's exit) run on a small executor
of its own (threads ``plugbay-async-<name>``, gone after kill), so the event loop
never waits on them and a busy default executor cannot hold up a kill. The
stubs that ``dispense()`` returns are built on a grpc.aio channel to the same
plugin, dialed the way the sync channel was, bound to the event loop that
started the client, and fail with the same typed errors.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self, TypeVar, overload

import grpc.aio

from plugbay.core.broker.aiofork import grpc_aio_usable
from plugbay.core.broker.broker import GRPCBroker
from plugbay.core.host.aiochannel import AioManagedChannel, WrongLoop, off_loop, retrieved
from plugbay.core.host.channel import ManagedChannel
from plugbay.core.host.client import Client
from plugbay.core.host.config import ClientConfig
from plugbay.core.host.reattach import ReattachConfig
from plugbay.core.host.typedstub import StubT, check_stub_type, checked_stub
from plugbay.core.protocol.handshake import HandshakeInfo
from plugbay.errors import ClientStateError

_T = TypeVar("_T")


class AsyncClient:
    """One plugin, from start to kill, for asyncio code. Use as ``async with AsyncClient(config) as client:``."""

    def __init__(self, config: ClientConfig) -> None:
        self._setup(Client(config))  # every check of the config happens there, before a plugin starts

    def _setup(self, client: Client) -> None:
        self._client = client
        client.user_class = type(self).__name__  # its refusals name the class the user made
        # start, dispense's checks, stderr_tail and failures judged off the loop ...
        self._executor = ThreadPoolExecutor(4, thread_name_prefix=f"plugbay-async-{client.name}")
        # ... and kill/close on one of their own, which nothing can queue ahead of
        self._stopper = ThreadPoolExecutor(1, thread_name_prefix=f"plugbay-async-stop-{client.name}")
        self._starting: asyncio.Future[None] | None = None
        self._channel: AioManagedChannel | None = None
        # beside the main one (AsyncRemoteClient's pins); weak: a dropped stub lets go of its channel
        self._more_channels: weakref.WeakSet[AioManagedChannel] = weakref.WeakSet()
        self._dispensed = Dispensed(f"the AsyncClient of plugin {self.name!r}")
        self._ending = False
        self._failed: str | None = None  # why it cannot be used (its start failed or was cancelled)
        self._owner_cancelled = False  # the task that began start() was cancelled (so the start was)

    # --- properties -------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._client.name

    @property
    def config(self) -> ClientConfig:
        return self._client.config

    @property
    def sync_client(self) -> Client:
        """The sync Client underneath (its broker, runner and reattach data are this client's)."""
        return self._client

    @property
    def channel(self) -> AioManagedChannel:
        """The grpc.aio channel (default deadline, typed failures) that dispensed stubs use."""
        if self._channel is None:
            self._check_usable()
            raise ClientStateError(f"AsyncClient.channel of plugin {self.name!r} is only available after"
                                   " start(); await start() first")
        return self._channel

    @property
    def broker(self) -> GRPCBroker:
        return self._client.broker

    @property
    def handshake(self) -> HandshakeInfo:
        return self._client.handshake

    @property
    def negotiated_version(self) -> int:
        return self._client.negotiated_version

    @property
    def connection_mode(self) -> str:
        return self._client.connection_mode

    @property
    def exited(self) -> bool:
        return self._client.exited

    @property
    def exit_code(self) -> int | None:
        """As Client.exit_code: set once an awaited kill() returned, too."""
        return self._client.exit_code

    async def stderr_tail(self) -> list[str]:
        """The last stderr lines (once the plugin has ended, its last ones: that may wait for its pipe)."""
        return await self._work_on(self._client.stderr_tail)

    def reattach_config(self) -> ReattachConfig:
        return self._client.reattach_config()

    # --- lifecycle --------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except WrongLoop:
            raise  # a refusal: the client is another loop's, in use there, and stays as it was
        except BaseException:
            # a reattached plugin is another host's: let go of it; a launched one ends with us
            await (self.close() if self.config.reattach is not None else self.kill())
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()

    async def start(self) -> None:
        """Start (or reattach) and connect; safe to await again, from several tasks at once.

        The task that began the start owns it: cancelled, it kills the plugin it launched (a
        reattach lets go instead) before the cancel goes on. Another task's cancel ends only its wait.
        """
        refuse_in_forked_child(type(self).__name__)  # first: a new AsyncClient would not help there
        self._check_usable()
        if self._channel is not None:
            # started on another loop: a stub dispensed here would fail every call with WrongLoop
            wrong = self._channel.off_its_loop(f"the client of plugin {self.name!r} was started on another event"
                                               " loop, and its calls run only there")
            if wrong is not None:
                raise wrong
            return
        if self._starting is not None:  # another task is starting it: wait with it
            if self._starting.get_loop() is not asyncio.get_running_loop():
                raise self._wrong_loop()
            try:
                await asyncio.shield(self._starting)
            except ClientStateError as exc:
                if self._owner_cancelled:  # not a kill() of the caller's: the start's owner went away
                    raise self._owner_cancelled_error() from exc
                raise
            if self._owner_cancelled or self._failed is not None:  # the start ended well, but its owner's
                raise self._owner_cancelled_error()  # cancel came before it resumed: it undoes that start
            return
        self._starting = asyncio.ensure_future(self._start_and_connect())
        try:
            await asyncio.shield(self._starting)
        except asyncio.CancelledError:
            self._owner_cancelled = True
            await self._stop_cancelled_start(self._starting)
            self._start_failed("its start() was cancelled")
            raise
        except BaseException as exc:
            self._start_failed(f"its start failed: {exc}")  # the Client freed what it made
            raise

    async def _start_and_connect(self) -> None:
        await self._work_on(self._client.start)
        if self._ending:  # a kill() or close() ended the client as its start finished: nothing to connect
            raise self._client.killed_starting_error()
        managed = self._client.channel
        assert isinstance(managed, ManagedChannel)
        # its WrongLoop refusal names the class the user made (an AsyncRemoteClient's said AsyncClient)
        channel = AioManagedChannel(self._aio_channel(), managed, asyncio.get_running_loop(), self._executor,
                                    type(self).__name__)
        self._channel = channel
        if self._ending:  # ... or just now: the stop thread's _after_stop may have looked before this channel
            await asyncio.shield(channel.aclose())
            raise self._client.killed_starting_error()

    def _aio_channel(self) -> grpc.aio.Channel:
        """The grpc.aio channel under the calls (on the loop): a second connection, dialed like the first."""
        channel: grpc.aio.Channel = self._client.aio_channel()
        return channel

    async def _stop_cancelled_start(self, starting: asyncio.Future[None]) -> None:
        """The thread goes on starting: have the Client kill what it launched (kill() during start()
        does) or, reattaching, let go of a plugin that is not ours to stop; wait for start() to end."""
        reattach = self.config.reattach is not None
        if reattach:
            self._client.abandon_start()
        else:
            await to_end(self._stop_on(self._client.kill))
        try:
            await to_end(starting)
        except Exception:  # killed while starting: the cancel is the news
            return
        # it had connected before the cancel came: undo that too
        if reattach:
            await to_end(self._stop_on(self._client.close))
        if self._channel is not None:
            await asyncio.shield(self._channel.aclose())

    def _owner_cancelled_error(self) -> ClientStateError:
        undone = ("abandons that start and leaves the plugin running (it is another host's)"
                  if self.config.reattach is not None else "stops the plugin it launched")
        return owner_cancelled(f"the client of plugin {self.name!r}", type(self).__name__, undone)

    def _start_failed(self, why: str) -> None:
        self._failed = why
        self._end_use()

    def _wrong_loop(self) -> WrongLoop:
        return WrongLoop(f"the client of plugin {self.name!r} is being started on another event loop; use it"
                         " from that loop (one AsyncClient per event loop; a sync Client serves any thread)",
                         None, grpc.StatusCode.FAILED_PRECONDITION, sent=False)

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise ClientStateError(f"the client of plugin {self.name!r} cannot be used: {self._failed};"
                                   f" make a new {type(self).__name__}")  # an AsyncRemoteClient's own
        if self._ending:
            raise self._killed_refusal()

    def _killed_refusal(self) -> ClientStateError:
        return self._client.killed_refusal()

    @overload
    async def dispense(self, name: str, stub_type: None = None) -> Any: ...
    @overload
    async def dispense(self, name: str, stub_type: type[StubT]) -> StubT: ...

    async def dispense(self, name: str, stub_type: type[Any] | None = None) -> Any:
        """What plugin ``name``'s ``grpc_client_async()`` builds on :attr:`channel` (once per name); given
        ``stub_type`` (that stub's class), typed as one, and a StubTypeError if it is not."""
        check_stub_type(stub_type, name, type(self).__name__, "grpc_client_async")
        await self.start()
        stub = await self._dispensed.get(name, lambda: self._build(name))
        return checked_stub(stub, stub_type, name, type(self).__name__, "grpc_client_async")

    async def _build(self, name: str) -> Any:
        # dispense's checks and the broker stream's opening take the Client's lock, which a
        # kill in progress holds for its grace: not on the event loop
        plugin = await self._work_on(self._client.plugin_for, name)
        return plugin.grpc_client_async(self._client.broker, self.channel)

    def kill(self) -> Coroutine[Any, Any, None]:
        """Shutdown, grace, force, then free everything (the sync ``kill()``); await the result, on
        any event loop. Idempotent. It begins when called, so a task cancelled before its first step
        still stops the plugin; once begun, a cancel does not cut it short but is passed on once the
        plugin is stopped."""
        return self._end(self._client.kill, self._begin(self._client.kill))

    def close(self) -> Coroutine[Any, Any, None]:
        """Reattached clients: disconnect and leave the plugin running (the sync ``close()``); await
        the result. Begins when called, as kill() does."""
        return self._end(self._client.close, self._begin(self._client.close))

    def _begin(self, stop: Callable[[], None]) -> concurrent.futures.Future[None] | None:
        """``stop`` under way on the stop thread now, bound to no event loop: whichever loop awaits
        the result (or none: ``asyncio.run(client.kill())`` makes it before its loop runs)."""
        try:
            begun = self._stopper.submit(stop)
        except RuntimeError:  # the stop thread is gone (the client ended): the await runs the stop
            return None
        begun.add_done_callback(self._after_stop)
        return begun

    def _after_stop(self, stop: concurrent.futures.Future[None]) -> None:
        """What _end() does once the stop is done, done here too (on the stop thread): a kill() whose
        coroutine never ran (its task was cancelled before its first step) must still free everything."""
        if stop.cancelled() or stop.exception() is not None:
            return  # _end raises it; the client stays as it was
        self._end_use()
        for channel in self._channels():
            channel.close_soon()  # on its own loop (thread-safe); _end's aclose() awaits the same close

    async def _end(self, stop: Callable[[], None], begun: concurrent.futures.Future[None] | None) -> None:
        # stop's own error (close() of a launched plugin) is raised
        cancelled = await to_end(asyncio.wrap_future(begun) if begun is not None else self._stop_on(stop))
        self._end_use()  # before the last await: a cancel there leaves no thread behind
        for channel in reversed(self._channels()):  # the main one last: it owns the connections
            await asyncio.shield(channel.aclose())  # after the stop: calls in flight failed as killed
        if cancelled:
            raise asyncio.CancelledError()

    def _channels(self) -> list[AioManagedChannel]:
        return ([self._channel] if self._channel is not None else []) + list(self._more_channels)

    def _end_use(self) -> None:
        """The client is used no more (refused from now on), and its idle threads end now; later
        work (a stderr_tail, a second kill) uses the loop's executor."""
        self._ending = True
        self._executor.shutdown(wait=False)
        self._stopper.shutdown(wait=False)

    def _work_on(self, func: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        return off_loop(self._executor, func, *args)

    def _stop_on(self, func: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        """Kill and close on a thread of their own: never queued behind a start or dispense."""
        return off_loop(self._stopper, func, *args)


def owner_cancelled(what: str, kind: str, undone: str) -> ClientStateError:
    """What a task that awaited a start begun by another task gets once that task's cancel stopped it;
    ``undone``: what the cancel does to that start ("stops the plugin it launched")."""
    return ClientStateError(f"{what} cannot be used: the task that began its start() was cancelled, which {undone}"
                            f" (one start serves every task awaiting it); make a new {kind}, started by a task"
                            " that lives as long as it is used")


def refuse_in_forked_child(what: str) -> None:
    """Raise before anything starts in a forked child of a process that ran grpc.aio: every grpc.aio
    call waits there for good (plugbay.core.broker.aiofork), and ``what``'s calls are grpc.aio's."""
    if not grpc_aio_usable():
        raise ClientStateError(
            f"{what} cannot run in this process: it is a forked child of a process that was running grpc.aio"
            " (an AsyncClient's calls, or a Client's broker stream) when it forked, and grpc.aio cannot run"
            " in such a child (grpcio's asyncio poller thread is not copied by the fork, so none of its calls"
            " would ever complete). Fork before starting any plugin, start the child with multiprocessing's"
            " 'spawn' or 'forkserver' method, or use the sync Client (RemoteClient, Supervisor) in the child")


class Dispensed:
    """dispense()'s stubs, one per name: built once however many tasks ask for it at once, as the sync
    Client's lock does (the build awaits, so a second task would otherwise build another)."""

    def __init__(self, owner: str) -> None:
        self._owner = owner  # for WrongLoop's message: "the AsyncClient of plugin 'kv'"
        self._stubs: dict[str, Any] = {}
        self._building: dict[str, asyncio.Future[Any]] = {}

    async def get(self, name: str, build: Callable[[], Awaitable[Any]]) -> Any:
        if name in self._stubs:
            return self._stubs[name]
        building = self._building.get(name)
        if building is not None and building.get_loop() is not asyncio.get_running_loop():
            raise WrongLoop(f"{self._owner} is dispensing {name!r} on another event loop; use it from that loop"
                            " (one per event loop; a sync Client serves any thread)", None,
                            grpc.StatusCode.FAILED_PRECONDITION, sent=False)  # asyncio's own error is untyped
        if building is None:  # the first to ask builds it; a cancel of its task ends only that task's wait
            building = self._building[name] = asyncio.ensure_future(self._build(name, build))
            building.add_done_callback(retrieved)
            building.add_done_callback(lambda _: self._building.pop(name, None))  # failed: may be asked again
        return await asyncio.shield(building)

    async def _build(self, name: str, build: Callable[[], Awaitable[Any]]) -> Any:
        self._stubs[name] = stub = await build()
        return stub


async def to_end(future: asyncio.Future[Any]) -> bool:
    """Await ``future`` to its end through any cancels (its error is raised); True if a cancel came."""
    cancelled = False
    while True:
        try:
            await asyncio.shield(future)
            return cancelled
        except asyncio.CancelledError:
            if future.cancelled():  # the executor itself is going away: nothing left to wait for
                return True
            cancelled = True
