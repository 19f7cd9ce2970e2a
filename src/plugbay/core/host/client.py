"""The host side: start a plugin through a Runner, handshake, connect, dispense, kill.

Mirrors go-plugin's ``Client``. ``start()`` launches the plugin with go-plugin's
environment, reads the handshake line from the runner's stdout, maps and dials
the announced address (AutoMTLS when asked), waits for the health service and
opens the broker and GRPCStdio streams. ``kill()`` asks GRPCController.Shutdown,
waits ``kill_grace``, forces the runner, and frees every thread, socket and
temp dir. Every wait is bounded. Asked on the shared loop thread (a logging
handler), kill() and close() return at once and a thread does it (LoopHandoff).
The connection's steps, once the handshake line is read, are connecting.Connecting's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Self, overload

from plugbay.core.broker.broker import GRPCBroker
from plugbay.core.broker.plugin import GRPCPlugin
from plugbay.core.host.callerrors import BrokerClientClosed, ClientClosed
from plugbay.core.host.channel import ManagedChannel
from plugbay.core.host.config import ClientConfig as ClientConfig  # re-exported: the contract name
from plugbay.errors import ClientStateError, ConfigError, UnknownPluginError, printable
from plugbay.core.protocol.handshake import HandshakeInfo
from plugbay.core.host.launch import follow_output, launch_env, private_folder, read_handshake, take_runner
from plugbay.core.host.connecting import Connecting
from plugbay.core.host.forkowner import ForkOwner
from plugbay.core.host.live import LIVE, LoopHandoff, cleanup_clients as cleanup_clients  # re-exported: its home
from plugbay.core.host.stop import ended_refusal, killed_while_starting, not_closable
from plugbay.core.transport.keepalive import Keepalive
from plugbay.core.host.reattach import ReattachConfig, unreattachable
from plugbay.core.host.streams import StreamKick
from plugbay.core.host.typedstub import StubT, check_stub_type, checked_stub
from plugbay.core.protocol.tls import generate_cert
from plugbay.runners.base import AttachedRunner, LaunchSpec, Runner, starting_until
from plugbay.runners.process import ProcessRunner

_log = logging.getLogger("plugbay.client")
# kill()/close() waiting for start()'s lock look this often for a start() that took the lock just
# before it noted itself (the first look missed it): that start is ended as any other
_LOCK_LOOK = 0.05


class Client(Connecting, ForkOwner):
    """One plugin, from start to kill. Use as a context manager."""

    def __init__(self, config: ClientConfig) -> None:
        if not isinstance(config, ClientConfig):
            raise ConfigError(f"Client takes a ClientConfig, got {type(config).__name__}")
        config.check()
        self.user_class = type(self).__name__  # what its errors tell the user to make anew (an AsyncClient's own)
        sources = [x for x in (config.runner, config.cmd, config.reattach) if x is not None]
        if len(sources) != 1:
            raise ConfigError("ClientConfig needs exactly one of runner=, cmd= or reattach=")
        if config.multiplex_broker and config.reattach is not None:
            raise ConfigError("the multiplexed broker cannot be used with reattach (as in go-plugin)")
        self._keepalive = Keepalive.of(config.mux_keepalive, "mux_keepalive")  # config.check() refused a wrong one
        runner: AttachedRunner | None = config.runner
        if config.cmd is not None:
            runner = ProcessRunner(list(config.cmd), skip_host_env=config.skip_host_env)
        # escaped: it names the plugin in log lines, and a runner names it after a file name (or an image)
        super().__init__(config, printable(str(config.name or (config.reattach.name if config.reattach else
                                                               runner.name if runner else "plugin"))), runner)
        self._versions = config.versions()
        self._lock = threading.RLock()
        self._started = False
        self._killed = False
        self._starting: threading.Thread | None = None  # the thread in start(), holding the lock
        self._kill_asked = False  # kill() came while another thread started: start() says so
        self._kill_called = False  # kill() stopped (or is stopping) the plugin: no reattach config for it
        self._handoff = LoopHandoff()  # a kill()/close() asked on the shared loop thread runs on its own thread
        self._broker_opened = False  # a plugin was dispensed: the broker's stream is on its way
        self._abandoned = False  # abandon_start(): a start() in progress ends and lets go
        self._failed: str | None = None  # the error that ended a start() no kill() ended
        self._pid: int | None = None  # the process that began to start it (forkowner)

    # --- properties -------------------------------------------------------------

    @property
    def handshake(self) -> HandshakeInfo:
        return self._need(self._info, "handshake")

    @property
    def negotiated_version(self) -> int:
        return self._need(self._version, "negotiated_version")

    @property
    def channel(self) -> ManagedChannel:
        # a grpc.Channel; .current is what it calls through: the grpcio channel, a RemoteClient's EndpointPool
        return self._need(self._channel, "channel")

    @property
    def runner(self) -> AttachedRunner:
        return self._need(self._runner, "runner")

    @property
    def broker(self) -> GRPCBroker:
        return self._need(self._broker, "broker")

    @property
    def exited(self) -> bool:
        return self._exit_code is not None or self._killed or self._handoff.thread is not None

    @property
    def exit_code(self) -> int | None:
        """How the plugin exited, as its runner says (after kill() too); None while it may run (host-side.md)."""
        return self._exit_code

    @property
    def connection_mode(self) -> str:
        """'plaintext', 'grpc-tls' (grpcio's TLS) or 'relay-tls' (OpenSSL relay)."""
        return self._need(self._conn, "connection_mode").mode

    # --- lifecycle --------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.kill()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def start(self) -> None:
        """Start (or reattach) and connect. Safe to call again; a killed Client cannot restart."""
        self._claim()
        with self._lock:
            if self._failed is not None:  # nobody killed it
                kind = self.user_class
                raise ClientStateError(f"the start of plugin {self.name!r} failed ({self._failed}); a {kind} starts"
                                       f" once: make a new {kind}")
            if self._killed or self._handoff.thread is not None:
                raise self.killed_refusal()
            if self._started:
                return
            self._starting = threading.current_thread()
            LIVE.add(self)  # a host that exits meanwhile (start() on a daemon thread) ends this start too
            failed: BaseException | None = None
            try:
                self._start()
            except BaseException as exc:
                failed = exc
            finally:
                self._starting = None
            if failed is not None or self._kill_asked:  # a kill() from this thread (a log handler) lands here too
                LIVE.discard(self)
                self._killed = True  # like go-plugin, a Client starts once
                if not self._kill_asked:
                    self._failed = type(failed).__name__
                if self.config.reattach is not None and not self._kill_asked:
                    # a failed reattach leaves the plugin alone: another host may still use it, and
                    # a plugin that did not answer here is not proven to be the one reattach names
                    self._disconnect()
                else:
                    self._teardown(graceful=False)
                if self._kill_asked and (failed is None or isinstance(failed, Exception)):  # the kill() ended it
                    raise self.killed_starting_error() from failed
                assert failed is not None
                raise failed
            if self.config.reattach is not None and self._runner is not None:
                try:
                    self._runner.adopted()
                except Exception as exc:  # the plugin is reached all the same: only a sweep's view is off
                    _log.warning("recording this host as the owner of plugin %s failed: %s", self.name, exc)
            self._started = True

    def _start(self) -> None:
        deadline = time.monotonic() + self.config.start_timeout
        # the runner's calls on this thread meanwhile (check_secure_config, plugin_to_host) are part of the
        # start: what they ask an engine or API server is bounded by what is left of it (runners.base)
        with starting_until(deadline):
            self._start_by(deadline)

    def _start_by(self, deadline: float) -> None:
        cfg = self.config
        if cfg.reattach is None:
            assert isinstance(self._runner, Runner)
            take_runner(self._runner, self.name)
            self._owns_runner = True
            if self._kill_asked:  # kill() came before this Client owned the runner: it could not end it
                raise ClientStateError(f"kill() was asked while plugin {self.name!r} was starting")
        launched_socket = cfg.reattach is None and self.runner.private_transport  # the plugin listens in there
        self._tmpdir = private_folder(cfg.unix_socket_temp_dir, cfg.unix_socket_group, launched_socket)
        if cfg.reattach is not None:
            self._runner = cfg.reattach.attached_runner(deadline)
            self._owns_runner = True
            if self._kill_asked:  # kill() came while it attached, before there was a plugin to end
                raise ClientStateError(f"kill() was asked while plugin {self.name!r} was being attached")
            self._cert = cfg.reattach.client_cert
            _, self._require_tls = cfg.tls_policy(self._runner, has_cert=self._cert is not None)
            info = cfg.reattach.handshake
        else:
            runner = self._runner
            assert isinstance(runner, Runner)
            if cfg.secure_config is not None:
                runner.check_secure_config(cfg.secure_config)
            auto_mtls, self._require_tls = cfg.tls_policy(runner)
            if auto_mtls:
                self._cert = generate_cert()  # fresh per client, as go-plugin does
            env = launch_env(cfg.handshake, self._versions, env=cfg.env, socket_dir=self._tmpdir,
                             socket_group=cfg.unix_socket_group, cert=self._cert, min_port=cfg.min_port,
                             max_port=cfg.max_port, multiplex=cfg.multiplex_broker, holds_streams=True)
            runner.start(LaunchSpec(env=env, socket_dir=self._tmpdir, labels={"plugbay.plugin": self.name},
                                    deadline=deadline))
            self._kick = StreamKick()  # armed while the plugin starts: see streams.StreamKick
            if isinstance(runner, ProcessRunner):  # a pidfd: set up (and the loop started) while it starts
                self._exit_watch = runner.watch_exit(self._on_exit)
            feed, self._output = follow_output(runner, self._logs, first_line_by=deadline)  # no loop hop
            info = read_handshake(runner, feed, deadline, self.name, cfg.start_timeout, cfg.multiplex_broker)
        self._accept(info)
        self._connect(info, deadline)

    # --- use --------------------------------------------------------------------

    @overload
    def dispense(self, name: str, stub_type: None = None) -> Any: ...
    @overload
    def dispense(self, name: str, stub_type: type[StubT]) -> StubT: ...

    def dispense(self, name: str, stub_type: type[Any] | None = None) -> Any:
        """The stub that plugin ``name``'s grpc_client() builds on the Client's channel; given ``stub_type``
        (that stub's class), typed as one, and a StubTypeError if it is not (see typedstub)."""
        check_stub_type(stub_type, name, type(self).__name__, "grpc_client")
        self._claim()
        with self._lock:
            self.start()  # refuses a killed Client; a no-op once started
            if name not in self._dispensed:
                self._dispensed[name] = self.plugin_for(name).grpc_client(self.broker, self.channel)
            return checked_stub(self._dispensed[name], stub_type, name, type(self).__name__, "grpc_client")

    def plugin_for(self, name: str) -> GRPCPlugin:
        """The definition of plugin ``name`` in the negotiated version (started; dispense's checks)."""
        self._claim()
        with self._lock:
            self.start()  # refuses a killed Client; a no-op once started
            plugins = self._versions[self.negotiated_version]
            if name not in plugins:
                raise UnknownPluginError(name, list(plugins))
            broker = self.broker
            if not self._broker_opened and not self._broker_queues and self._kick is not None:
                # go-plugin opens the broker stream at once and its plugins' Send waits for it: a
                # handler that announces a connection before the host touched its broker would
                # hang. Dispensing is when plugin code can first be called, so open it now: on the
                # shared loop once the first call returned or DEFER after the spawn (StreamKick); a
                # broker use opens it at once.
                self._kick.open_broker(broker)
            self._broker_opened = True
            return plugins[name]

    def abandon_start(self) -> None:
        """A start() in progress on another thread ends at its next check and lets go of the plugin
        without stopping it (a reattached plugin is not this host's to stop). For AsyncClient."""
        self._abandoned = True

    def killed_refusal(self) -> ClientStateError:
        """What start() and dispense() of a killed (or closed) Client raise."""
        closed = self.config.reattach is not None and self._started and not self._kill_called  # not killed
        code = self._exit_code  # None: as far as this Client knows, the plugin runs on
        return ended_refusal(self.name, self.user_class, closed=closed,
                             exit_words=None if code is None or not closed else self._exit_words(code))

    def killed_starting_error(self) -> ClientStateError:
        """What start() raises when a kill() (or close()) from another thread ended it meanwhile."""
        return killed_while_starting(self.name, self.user_class)

    def reattach_config(self) -> ReattachConfig:
        """What another host process needs to attach to this running plugin."""
        # a close() leaves the plugin running: its config holds; a kill(), a failed start or an exit do not
        exit_code = self._exit_code if self._exit_code is not None or self._runner is None else self._runner.wait(0)
        refused = unreattachable(self.name, self._failed, self.config.reattach is not None, self._kill_called,
                                 None if exit_code is None else self._exit_words(exit_code))
        if refused:
            raise ClientStateError(refused)
        info = self._need(self._announced, "reattach_config")
        return ReattachConfig(handshake=info, runner=self.runner.reattach_data(),
                              client_cert=self._cert, name=self.name)

    def kill(self) -> None:
        """Shutdown, grace, force; then free everything. Idempotent, bounded; on the loop thread, see _end."""
        self._end("kill", self.kill, lambda: self._teardown(graceful=True))

    def kill_unanswering(self) -> None:
        """kill() for a plugin that answered no health check (a Supervisor's restart): no Shutdown (it would
        wait that out). A frozen plugin (SIGSTOPped, a paused container) gets its runner's forced stop while
        still frozen, no thaw in which it would finish calls already sent; any other (slow, under load) the
        runner's SIGTERM and kill_grace, so its own cleanup runs. Then the rest as kill()."""
        self._end("kill", self.kill_unanswering, lambda: self._teardown(graceful=False, unanswering=True))

    def close(self) -> None:
        """Reattached clients: disconnect and free this host's resources, leave the plugin running."""
        if self._forked_away():
            return
        self._check_closable()
        self._end("close", self.close, self._disconnect)

    def _end(self, what: str, again: Callable[[], None], stop: Callable[[], None]) -> None:
        """kill()/close(): ``stop()`` once, under the lock; on the shared loop thread (a logging
        handler) it returns at once and ``plugbay-<what>-<name>`` does it (LoopHandoff)."""
        if self._forked_away():
            return
        if self._handoff.start(f"plugbay-{what}-{self.name}", again, self._killed):
            return
        starting = self._starting
        if what == "close" and starting is threading.current_thread():  # it would disconnect under start()
            raise ClientStateError(f"Client.close() was asked inside start() of plugin {self.name!r} (a log handler on"
                                   " the thread that starts it); call close() once start() has returned, or kill()")
        if starting is not None and self._end_start(what, starting):
            return
        while not self._lock.acquire(timeout=_LOCK_LOOK):
            # a start() that had taken the lock but not yet noted itself: end it as any other
            if starting is None and self._starting is not None:
                starting = self._starting
                self._end_start(what, starting)
        try:
            if not self._killed:
                if what == "close":
                    self._check_closable()  # again: a start() may have finished meanwhile
                self._killed = True
                self._kill_called = what == "kill"  # under the lock: a close() that came first leaves it running
                LIVE.discard(self)
                try:
                    if self._broker is not None:  # its use from now on is this end's doing, as a call's is
                        self._broker.closed_error = BrokerClientClosed.of(
                            self.name, self.user_class, runs_on=what == "close" and self._exit_code is None)
                    if self._channel is not None:  # may read the plugin's last stderr lines: theirs to make fail
                        if what == "close" and self._channel.killed_error is None:  # a Supervisor's words stay
                            self._channel.killed_error = ClientClosed.by_close(self.name, self.user_class)
                        self._channel.begin_close(self._broker is not None and self._broker.serving)
                    stop()
                except BaseException:
                    # Ctrl-C in the graceful part (Shutdown, the grace wait): nothing would stop
                    # the plugin later (this Client counts as killed, and the plugin has its own
                    # process group, so the interrupt never reached it): force it now
                    self._force_stop(what == "kill")
                    raise
        finally:
            self._lock.release()
        self._handoff.join()  # one a loop callback started: all but done once we had the lock

    def _end_start(self, what: str, starting: threading.Thread) -> bool:
        """Make the start() on ``starting`` end soon; True when kill() was asked inside it (return at once)."""
        if what == "close" and self.config.reattach is None:  # what start() launches is this Client's to kill:
            self._check_closable(starting=True)  # refused now, not once the start ended (up to start_timeout)
        elif what == "close":
            self._abandoned = True  # the start gives up waiting on the plugin, and leaves it running
        if what != "kill":
            return False
        self._kill_asked = True  # start() holds the lock until start_timeout: end its plugin (safe) now
        self._kill_called = True
        runner = self._own_runner()
        if runner is not None:
            try:
                runner.kill(self._kill_grace())
            except Exception as exc:  # start() kills it again as it fails, and says so
                _log.warning("killing plugin %s failed: %s", self.name, exc)
        # asked inside start() (a log handler): tearing down under it would leave it going on with a
        # torn-down Client
        return starting is threading.current_thread()

    def _force_stop(self, kill: bool) -> None:
        runner = self._own_runner()
        try:
            if runner is not None:
                runner.force_kill() if kill else runner.detach()
        except Exception as exc:
            _log.warning("stopping plugin %s failed: %s", self.name, exc)
        finally:
            self._note_end(runner if kill else None)
            self._close_streams()

    def _check_closable(self, starting: bool = False) -> None:
        if self.config.reattach is None and (self._started or starting) and not self._killed:
            raise not_closable(self.name, starting)
