"""What a Client holds once it starts, and how it lets go of it.

``kill()`` ends the plugin (``_teardown``: the broker's stream first, a go-plugin
plugin's stdio stream read until quiet, then GRPCController.Shutdown, the grace,
the runner, then what is left of the stdio stream), ``close()`` of a reattached
Client only lets go (``_disconnect``); both then free the channel, the mux, the
output followers, the shared I/O thread when it is the last user, and the socket
folder. client.py holds the lifecycle around these.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from typing import Any, TypeVar

from plugbay.core.broker.broker import GRPCBroker
from plugbay.core.host.channel import ManagedChannel
from plugbay.core.host.config import ClientConfig
from plugbay.core.host.logs import LogPump
from plugbay.core.host.stop import ExitGate, ask_shutdown
from plugbay.core.host.stdio import StdioReader
from plugbay.core.host.streams import Stdio, StreamKick
from plugbay.core.protocol.handshake import HandshakeInfo
from plugbay.core.protocol.tls import CertKey
from plugbay.core.transport import ioloop
from plugbay.core.transport.muxhost import HostMux
from plugbay.core.transport.secure import Redial, SecureChannel
from plugbay.errors import ClientStateError
from plugbay.runners.base import AttachedRunner, Cancellable, Joinable

_log = logging.getLogger("plugbay.client")
_T = TypeVar("_T")
# How long kill() reads a stopped plugin's stdio stream on: to its end, which a stopped plugin's
# connection shows at once (a plugbay plugin ends it before it exits), or, where a published port
# hides the exit, until nothing came for STDIO_QUIET s; STDIO_FINISH s at most.
STDIO_FINISH = 5.0
STDIO_QUIET = 0.5
# How long kill() reads a go-plugin plugin's stdio stream before Shutdown: until nothing came for
# SETTLE_QUIET s, SETTLE_LIMIT s at most (its Shutdown cuts the connection with what it held).
SETTLE_QUIET = 0.1
SETTLE_LIMIT = 1.0


class ClientParts:
    """The pieces of one started plugin's connection (None until start() makes them)."""

    def __init__(self, config: ClientConfig, name: str, runner: AttachedRunner | None) -> None:
        self.config = config
        self.name = name
        self._runner = runner
        # this Client may stop and let go of _runner: it took it for its start, or reattached through it
        # (a runner= another Client runs is not; nor is any before start() took it)
        self._owns_runner = False
        self._tmpdir: str | None = None
        self._cert: CertKey | None = None
        self._require_tls = False
        self._info: HandshakeInfo | None = None
        self._announced: HandshakeInfo | None = None
        self._version: int | None = None
        self._conn: SecureChannel | None = None
        self._channel: ManagedChannel | None = None
        self._broker: GRPCBroker | None = None
        self._mux: HostMux | None = None
        self._pinned_socket: int | None = None  # the O_PATH descriptor of the proven unix socket the channel dials
        self._stdio: Stdio | None = None
        self._kick: StreamKick | None = None  # begins the held stdio/broker streams
        self._broker_queues = False  # the plugin said (health Check) it queues broker messages
        self._logs = LogPump(self.name, config.logger, config.raw_log_sink)
        self._output: Joinable | None = None  # the runner's stdout/stderr follower
        self._exit_watch: Cancellable | None = None
        self._exit_gate = ExitGate()  # _on_exit acts once, after _connect (start() reports earlier exits)
        self._stop = threading.Event()
        self._exit_code: int | None = None
        self._exit_heard: int | None = None  # set by _on_exit before it asks _exit_gate (Connecting reads it)
        self._dispensed: dict[str, Any] = {}
        self._controller: Any = None  # GRPCControllerStub, built while the channel is open
        self._logs_drained = False

    def redial(self) -> Redial:
        """How the channel was dialed, to dial the same plugin again on grpc.aio (AsyncClient)."""
        redial = self._need(self._conn, "redial").redial
        assert redial is not None, "every dialed channel records its Redial"
        return redial

    def aio_channel(self) -> Any:
        """A new grpc.aio channel to the same plugin, dialed as the first (on the loop that will use it)."""
        return self.redial().aio_channel()

    def stderr_tail(self) -> list[str]:
        """The last stderr lines; once the plugin has ended, they include its last ones.

        Not waited for on the shared loop thread (a log handler): only that loop ends the streams.
        """
        runner = self._runner
        if (self._output is not None and runner is not None and not ioloop.shared().on_loop()  # started, followed
                and (self._exit_code is not None or runner.wait(0) is not None)):
            self._drain_logs()  # an exit can be seen before a resting pipe is read through
        return self._logs.tail()

    def _drain_logs(self) -> None:
        if not self._logs_drained:  # its last stderr lines may still be in the pipe
            self._logs.join(1.0)
            self._logs_drained = True

    def _need(self, value: _T | None, what: str) -> _T:
        if value is None:  # named as the class the user holds (an AsyncRemoteClient's sync client says so)
            kind = getattr(self, "user_class", "Client")
            how = (f"await client.start() first, or use it as `async with {kind}(config) as client:`"
                   if kind.startswith("Async") else
                   f"call start() first, or use it as `with {kind}(config) as client:`")
            raise ClientStateError(f"{kind}.{what} is only available after start(): {how}")
        return value

    def _own_runner(self) -> AttachedRunner | None:
        return self._runner if self._owns_runner else None

    def _disconnect(self) -> None:
        self._stop.set()
        self._stop_exit_watch()
        self._close_rpc_streams()
        runner = self._own_runner()
        if runner is not None:
            # the runner's watchers, port-forwards and engine clients are this host's: they go, the plugin stays
            try:
                runner.detach()
            except Exception as exc:
                _log.warning("letting go of plugin %s's runner failed: %s", self.name, exc)
        self._close_streams()

    def _teardown(self, graceful: bool, unanswering: bool = False) -> None:
        """End the plugin; ``unanswering``: one that answered no health check, never asked to Shutdown (it
        would wait that out): a frozen one the runner's forced stop at once, any other its grace as kill()'s."""
        self._stop.set()
        self._stop_exit_watch()
        runner = self._own_runner()
        asked = ended = False
        if (runner is not None and self._exit_code is None and runner.wait(0) is not None) or unanswering:
            graceful = False
        if runner is not None and unanswering and self._frozen(runner):
            # SIGKILL (a paused container's kill) while still frozen: a thaw first (the grace's SIGCONT, an
            # unpause) let it finish calls whose callers were told it ended. A merely slow plugin (its health
            # checks timed out under load) gets SIGTERM and the grace below: its own cleanup runs
            self._force_runner(runner)
            ended = True
        elif runner is not None:
            # before Shutdown: once the plugin exits, its children no longer point back to it
            try:
                runner.record_descendants()
            except Exception as exc:
                _log.warning("listing plugin %s's descendants failed: %s", self.name, exc)
        # End the broker's stream before Shutdown, as go-plugin's host does: a graceful stop on
        # the plugin side waits for open streams. A stdio stream with a sink stays open: it
        # carries what the plugin wrote before it stopped, and a plugbay plugin ends it itself
        # once that is sent. A go-plugin plugin's Shutdown (grpc's Server.Stop) cuts the connection
        # at once, and grpcio drops what it received but had not handed over: its stream is read
        # (begun now if it was held) until it goes quiet before the plugin is asked to stop.
        stdio = self._stdio if isinstance(self._stdio, StdioReader) and self._stdio.keeps_output else None
        self._close_rpc_streams(keep_stdio=stdio is not None)
        stopped = False
        try:
            if (stdio is not None and not self._broker_queues and graceful and self._exit_code is None
                    and (runner is None or runner.wait(0) is None)):
                stdio.settle(SETTLE_QUIET, SETTLE_LIMIT)
            # a frozen plugin answers nothing: Shutdown would wait out its 2 s; the runner thaws and ends it
            if graceful and self._controller is not None and self._exit_code is None and not self._frozen(runner):
                asked = ask_shutdown(self._controller, self.name)
            if runner is not None and not ended:
                if asked and runner.wait(self.config.kill_grace) is None:
                    _log.warning("plugin %s did not exit within %.1fs of Shutdown; killing it",
                                 self.name, self.config.kill_grace)
                try:
                    runner.kill(0 if asked else self._kill_grace())
                except Exception as exc:
                    _log.warning("killing plugin %s failed: %s", self.name, exc)
            stopped = runner is not None or asked  # else not ours to stop: it may stream on
        finally:
            if stdio is not None and stopped:
                stdio.finish(STDIO_FINISH, STDIO_QUIET)
            elif stdio is not None:  # or interrupted (Ctrl-C): closed now, the plugin is force-killed next
                stdio.close()
        self._note_end(runner)
        self._close_streams()

    def _note_end(self, runner: AttachedRunner | None) -> None:
        """Once this Client ended its plugin: the code it ended with, as the runner's wait() reports an exit
        (the exit watch, cancelled first, would have said it). None while the runner says it may run on (a kill
        that failed, a plugin this Client does not own); a reattached process's UNKNOWN_EXIT_CODE, -1."""
        if runner is None or self._exit_code is not None:
            return
        try:
            self._exit_code = runner.wait(0)
        except Exception as exc:  # the code only: an engine that stopped answering after the removal
            _log.debug("plugin %s: the runner could not say how it ended: %s", self.name, exc)

    def _force_runner(self, runner: AttachedRunner) -> None:
        try:
            runner.force_kill()
        except Exception as exc:
            _log.warning("killing plugin %s failed: %s", self.name, exc)

    def _stop_exit_watch(self) -> None:
        if self._exit_watch is not None:
            self._exit_watch.cancel()

    def _kill_grace(self) -> float:
        """The grace a kill gives the plugin: none before its handshake was accepted (a failed or cut-short
        start has nothing to finish, and a container's PID 1 ignores SIGTERM: it held each for all of
        kill_grace), else ClientConfig.kill_grace. Accepted means dialed: a line whose address or certificate
        the host refuses (another host's address, a path out of the socket folder, no AutoMTLS certificate)
        is refused as a malformed line is, and the host never connected to what it announced."""
        return 0 if self._info is None else self.config.kill_grace

    def _frozen(self, runner: AttachedRunner | None) -> bool:
        try:
            return runner is not None and runner.frozen()
        except Exception as exc:  # an engine that does not answer: asked as before
            _log.debug("could not tell whether plugin %s is frozen: %s", self.name, exc)
            return False

    def _close_rpc_streams(self, keep_stdio: bool = False) -> None:
        if self._kick is not None:
            self._kick.cancel()
        if self._stdio is not None and not keep_stdio:
            self._stdio.close()
        if self._broker is not None:
            try:  # host callbacks still running: cancelled within kill_grace (1 s at most), then not waited for
                self._broker.close(within=self._kill_grace())
            except Exception as exc:
                _log.debug("closing broker: %s", exc)

    def _close_streams(self) -> None:
        if self._channel is not None:
            self._channel.detach()
        if self._conn is not None:
            self._conn.close()
        if self._mux is not None:
            self._mux.close()
        if self._pinned_socket is not None:  # after the channel: nothing dials its number any more
            os.close(self._pinned_socket)
            self._pinned_socket = None
        if self._output is not None:
            self._output.join(5.0)
        self._logs.join(5.0)
        ioloop.shared().join_idle()  # the last plugin gone: the shared I/O thread ends, joined
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
