"""The plugin side: serve(), go-plugin's plugin.Serve in Python.

A plugin program builds a :class:`ServeConfig` and calls :func:`serve`, which

1. refuses to run without the host's magic cookie (go-plugin's message, exit 1);
2. negotiates the app protocol version against PLUGIN_PROTOCOL_VERSIONS;
3. listens (plugbay.core.plugin.listener: unix socket by default, TCP, PLUGBAY_LISTEN),
   with AutoMTLS when the host sent PLUGIN_CLIENT_CERT;
4. serves health ("plugin" SERVING), GRPCController, GRPCStdio, GRPCBroker and
   the plugins' own services;
5. prints the handshake line on stdout, then captures fds 1 and 2 for GRPCStdio;
6. blocks until GRPCController.Shutdown, SIGTERM or the host's death (the host's end of the
   plugin's stderr pipe closed: docs/plugin-side.md), stops gracefully and returns.

SIGINT is ignored like in go-plugin when the plugin runs as the host's child
process: a Ctrl-C at the terminal reaches the whole process group, and the host
decides when its plugins stop (Terraform-style hosts rely on it). With
PLUGBAY_LISTEN (a plugin placed in a container or pod, alone in its process
group) SIGINT stops it gracefully like SIGTERM.
Log records go to the original stderr as hclog JSON (plugbay.core.plugin.logs).
Every setup failure prints one clear message on stderr and exits with 1.
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

import grpc

from plugbay.core.broker.broker import GRPCBroker
from plugbay.core.broker.brokertransport import BrokerTransport
from plugbay.core.broker.stream import plugin_broker
from plugbay.errors import ConfigError, HandshakeError, PlugbayError
from plugbay.core.protocol.handshake import (
    CORE_PROTOCOL_VERSION,
    ENV_CLIENT_CERT,
    ENV_MULTIPLEX_GRPC,
    ENV_HOST_SESSION,
    ENV_MUX_HOLDS_STREAMS,
    ENV_UNIX_SOCKET_DIR,
    PROTOCOL_GRPC,
    HandshakeInfo,
)
from plugbay.core.plugin.controller import add_to_server as add_controller
from plugbay.core.plugin.fdlimit import raise_fd_limit
from plugbay.core.plugin.gate import MAX_WATCHES, NETWORK_MAX_STREAMS, NETWORK_WATCHES, HandlerGate, serve_gates
from plugbay.core.plugin.gatedserver import AddGuard, GatedServer, plugin_service_names
from plugbay.core.plugin.health import HealthServicer
from plugbay.core.plugin.health import add_to_server as add_health
from plugbay.core.plugin.listener import ENV_LISTEN, Listening, listen, parse_bool, plan_endpoint
from plugbay.core.plugin.netconfig import NetworkServe
from plugbay.core.plugin.stopping import StopLatch
from plugbay.core.transport.grpcoptions import with_defaults
from plugbay.core.transport.sockets import HANDSHAKE_TIMEOUT
from plugbay.core.transport.unstarted import stop_server
from plugbay.core.transport.workers import DaemonPool
from plugbay.core.broker.plugin import PluginSet, check_plugin_set
from plugbay.core.plugin.logs import PluginLogging
from plugbay.core.plugin.reattachwait import watch_host
from plugbay.core.plugin.setupfail import fail_setup
from plugbay.core.plugin.serveconfig import ServeConfig as ServeConfig  # re-exported: its public home
from plugbay.core.plugin.serveconfig import protocol_version as protocol_version  # re-exported
from plugbay.core.plugin.stdio import StdioCapture, closed_std_fd, flush_std
from plugbay.core.plugin.stdioservice import StdioServicer
from plugbay.core.plugin.stdioservice import add_to_server as add_stdio

if TYPE_CHECKING:
    from plugbay.core.plugin.automtls import ServerTLS
    from plugbay.core.plugin.frontsession import Instance
    from plugbay.core.transport.muxsession import MuxSession

# Network mode (plugbay.core.plugin.network), AutoMTLS (plugbay.core.plugin.automtls) and the
# multiplexer are imported where they are used: a plaintext plugin its host launches loads none of
# them (tests/test_layers.py pins it), which keeps its start close to a bare grpcio server's.

COOKIE_MESSAGE = (
    "This binary is a plugin. These are not meant to be executed directly.\n"
    "Please execute the program that consumes these plugins, which will\n"
    "load any plugins automatically\n"
)
MISCONFIGURED_MESSAGE = (
    "Misconfigured ServeConfig given to serve this plugin: no magic cookie\n"
    "key or value was set. Please notify the plugin author and report\n"
    "this as a bug.\n"
)

STOP_GRACE = 1.5  # a go-plugin host force-kills 2 s after Shutdown
HAND_OVER_LIMIT = 1.0  # Shutdown waits this long at most for captured output to go out (a plugbay host: 2 s)
LOOP_FLOOR = 0.25  # the asyncio handlers' loop gets at least this at close, even past STOP_GRACE
# grpcio closes a connection that has not completed TLS (and, in plaintext, the HTTP/2
# preface and SETTINGS) within this; its default is 120 s, which let never-speaking
# connections pile up. Same bound as the OpenSSL relay's (core/transport/relay.py).
SERVER_HANDSHAKE_TIMEOUT_MS = int(HANDSHAKE_TIMEOUT * 1000)


def serve(config: ServeConfig) -> None:
    """Serve the plugins until the host shuts us down. Exits the process (1) on setup errors."""
    if not isinstance(config, ServeConfig):  # a mistake in the plugin's code: raised, with its traceback
        raise ConfigError(f"serve() takes a ServeConfig, got {type(config).__name__}; pass"
                          " serve(ServeConfig(handshake=HANDSHAKE, plugins={...}))")
    env = dict(os.environ)
    if config.network is None:
        try:
            network = NetworkServe.from_env(env)
        except PlugbayError as exc:
            fail_setup(f"{exc}\n")
        if network is not None:
            config = copy.copy(config)  # the caller's config stays as it was
            config.network = network
    handshake = config.handshake
    if not getattr(handshake, "magic_cookie_key", "") or not getattr(handshake, "magic_cookie_value", ""):
        fail_setup(MISCONFIGURED_MESSAGE)
    # On the network no host launches us (nobody sets the cookie): mTLS is the gate there.
    if config.network is None and env.get(handshake.magic_cookie_key) != handshake.magic_cookie_value:
        fail_setup(COOKIE_MESSAGE)
    # a go-plugin host shows only hclog JSON lines above DEBUG; a plugbay host (or none, on the network) reads
    # the plain line, and the same error twice would show twice
    go_host = config.network is None and not env.get(ENV_HOST_SESSION)
    if config.network is None and (closed := closed_std_fd()) is not None:  # before serve() opens fds
        fail_setup(closed, hclog=go_host)
    try:
        config.check()  # again: a field may have changed since ServeConfig() checked it
    except ConfigError as exc:  # one line for the host, not a traceback from grpcio or logging
        fail_setup(f"{exc}\n", hclog=go_host)
    raise_fd_limit()  # as a Go plugin's runtime does at its start
    server = _PluginServer(config, env)
    try:
        server.start()
    except PlugbayError as exc:
        server.close()
        fail_setup(f"{exc}\n", hclog=go_host)
    except OSError as exc:  # a folder or socket this machine refused: one line for the host, not a traceback
        server.close()
        fail_setup(f"plugin setup failed: {exc}. Check that {ENV_UNIX_SOCKET_DIR} (or TMPDIR) names a folder"
              " this plugin may write, and the plugin's file and port limits\n", hclog=go_host)
    except BaseException:
        server.close()
        raise
    try:
        server.wait()
    finally:
        server.close()


POOL_KEEP = 4  # a local plugin's pool threads that stay however long idle


class _PluginServer:
    """Everything one serve() call owns, closed in reverse order."""

    def __init__(self, config: ServeConfig, env: Mapping[str, str]) -> None:
        self.config = config
        self.env = env
        self.stopping = StopLatch()  # woken without a lock: see core/plugin/stopping.py
        self._logging = PluginLogging(config.logger)  # hclog JSON on the original fd 2 (core.plugin.logs)
        self.log = self._logging.log
        self.capture = StdioCapture(self.log, config.stdio_buffer_bytes)
        self.health = HealthServicer()
        self.health.announce_broker_queues()
        # on the network plugbay's own services have a gate too: a peer's request may never come (see gate.py)
        self.gate, self.own_gate, threads = serve_gates(config.handler_limit(), config.network is not None)
        # see DaemonPool: exits promptly. Locally the threads a burst (of calls waiting for a slot) started
        # leave when idle, but for the few an idle plugin uses (the stdio and broker streams, a health check)
        self.executor = DaemonPool(threads, "plugbay-grpc", keep=POOL_KEEP if config.network is None else None)
        self.grpc: grpc.Server | None = None
        self.adds = AddGuard()  # closed before the server stops: the plugin's code may keep it (gatedserver.py)
        self.broker: GRPCBroker | None = None
        self.listening: Listening | None = None
        self.tls: ServerTLS | None = None
        self._plugin_set: PluginSet = {}
        self._version = 0
        self._old_signals: dict[int, Any] = {}
        self._signal_notes: list[tuple[int, str]] = []  # what the handlers saw, logged by wait()
        self._closed = False

    def start(self) -> None:
        # Handlers first: a SIGTERM during setup must still clean up (socket file included).
        self._install_signals()
        if self.config.network is not None and self.config.network.stop is not None:
            self.config.network.stop.attach(self.stop)  # off the main thread, the program's way to stop it
        version, plugin_set = protocol_version(self.config, self.env)
        defaults = [("grpc.so_reuseport", 0), ("grpc.server_handshake_timeout_ms", SERVER_HANDSHAKE_TIMEOUT_MS)]
        network, grace_notes = self.config.network, []
        if network is not None:  # hosts' keepalive pings (RemoteConfig.grpc_keepalive) are welcome
            from plugbay.core.transport.grpcping import server_options

            defaults += server_options(network.keepalive)
            defaults.append(("grpc.max_concurrent_streams", NETWORK_MAX_STREAMS))
        options = with_defaults(defaults, self.config.grpc_server_options)
        self.grpc = grpc.server(self.executor, options=options)
        own_services = self.grpc if self.own_gate is None else GatedServer(self.grpc, self.own_gate)
        self._plugin_set, self._version = plugin_set, version
        tls: ServerTLS | None = None
        if network is not None:
            from plugbay.core.plugin.network import DiscoveryServicer, add_discovery, refuse_broker, serve_front
            from plugbay.core.plugin.network import bind as bind_network

            own, peer_pem = None, None
            if network.brokering:
                kind, address, cleanups = serve_front(self.grpc, network, self._session_instance)
                self.listening = Listening(kind, address, False, _cleanups=cleanups)
            else:
                kind, address, _ = bind_network(self.grpc, network)
                self.listening = Listening(kind, address, False)
            add_discovery(DiscoveryServicer([(version, sorted(plugin_set))], multiplex=network.brokering),
                          own_services)
            broker = refuse_broker(own_services)  # never one that dials what a peer names: hosts broker in sessions
        else:
            if self.env.get(ENV_CLIENT_CERT):  # the host asked for AutoMTLS
                from plugbay.core.plugin.automtls import server_tls

                tls = self.tls = server_tls(self.env)  # close() waits for its context thread
            own, peer_pem = (tls.own, tls.peer_pem) if tls is not None else (None, None)
            multiplex_asked = parse_bool(self.env.get(ENV_MULTIPLEX_GRPC, ""))
            try:
                self.listening = listen(self.grpc, plan_endpoint(self.env), multiplex=multiplex_asked,
                                        credentials=tls.credentials if tls is not None else None,
                                        relay_context=tls.relay if tls is not None else None,
                                        folder=self.env.get(ENV_UNIX_SOCKET_DIR) or None)
            except ConfigError:
                if tls is not None and tls.credentials is not None:
                    tls.check_peer()  # grpcio's TLS refuses a certificate it cannot load as a failed bind
                raise
            if self.listening.mux is not None and parse_bool(self.env.get(ENV_MUX_HOLDS_STREAMS, "")):
                self.listening.mux.peer_holds = True  # knock and open at once (core/transport/held.py)
            transport = BrokerTransport(tls=own, peer_cert_pem=peer_pem,
                                        socket_dir=self.env.get(ENV_UNIX_SOCKET_DIR) or None,
                                        multiplex=self.listening.multiplex, mux=self.listening.mux)
            broker = plugin_broker(self.grpc, transport)
        self.broker = broker
        self._register(self.grpc, broker, self.gate, own_services, self.adds)
        self.grpc.start()
        if tls is not None:
            tls.ready()  # the relay's context, set up on a thread meanwhile
        info = HandshakeInfo(CORE_PROTOCOL_VERSION, version, self.listening.network,
                             self.listening.address, PROTOCOL_GRPC,
                             own.cert_der if own is not None else None, self.listening.multiplex)
        # Capture first, then the line on the original stdout: whatever the plugin prints once the
        # host has the line (its first call can come at once) is captured, none of it on the host's
        # handshake pipe. On the network stdout/stderr are the service's own log: no capture.
        if network is None:
            # a container's stderr is its engine's, not a host's pipe; a host that means to let its plugin
            # outlive it (a later host reattaches) says so, and for how long (core/plugin/reattachwait.py)
            if not self.env.get(ENV_LISTEN):
                grace_notes = watch_host(self.env, self.capture, self._logging, self.listening, self._host_gone,
                                         self.stop)
            self.capture.start()
            self._logging.keep_stderr_writers()  # the program's own log handlers still reach the host's log
        else:
            flush_std()  # a closed sys.stdout object too (fd 1 may be open): the line goes to fd 1
        try:
            os.write(self.capture.original_stdout, (info.to_line() + "\n").encode())
        except OSError as exc:  # not a folder or port limit: serve()'s hint for OSError would mislead
            raise HandshakeError(f"plugin setup failed: the handshake line could not be written to stdout"
                                 f" ({exc}): the host closed the plugin's stdout before reading it") from exc
        # After the line: the host is waiting for it, not for these records (json loads at the first).
        if own is not None:  # go-plugin's record for AutoMTLS, which it logs while setting it up
            self.log.debug("configuring server automatic mTLS")
        self.log.debug("plugin address", extra={"network": info.network, "address": info.address})
        for note in grace_notes:
            self.log.warning(note)

    def _register(self, server: grpc.Server, broker: GRPCBroker, gate: HandlerGate, own: grpc.Server,
                  adds: AddGuard) -> None:
        """Health, controller, stdio (on ``own``) and the plugins' own services (behind ``gate``) on ``server``;
        the plugins' code may add to it until ``adds`` is closed."""
        # a server's threads answer Check and Shutdown; a shared one's hosts may each hold a Watch
        add_health(self.health, own, watches=MAX_WATCHES if self.config.network is None else NETWORK_WATCHES)
        add_controller(own, self._shutdown_asked)
        add_stdio(StdioServicer(self.capture), own)
        check_plugin_set(self._plugin_set, "ServeConfig.plugins")  # again: a config's fields may change
        names = plugin_service_names(reserve_own=True)
        for name, plugin in self._plugin_set.items():
            try:
                plugin.grpc_server(broker, GatedServer(server, gate, adds, names, f"plugin {name!r}"))
            except PlugbayError:
                raise
            except Exception as exc:
                raise ConfigError(f"error registering {name!r}: {exc}") from exc

    def _session_instance(self, mux: MuxSession, path: str) -> Instance:
        """A network host session's own plugin instance (core/plugin/network.py), registered as ours."""
        from plugbay.core.plugin.network import session_instance

        return session_instance(self.config, [(self._version, sorted(self._plugin_set))], self._register, mux, path)

    def _shutdown_asked(self) -> None:
        network = self.config.network
        if network is not None and not network.allow_shutdown:
            self.log.warning("GRPCController.Shutdown ignored: this plugin is a shared network service"
                             " (NetworkServe.allow_shutdown=False); stop it with SIGTERM")
            return
        # Answered once the captured output has gone to the host's reader: go-plugin's host closes
        # the connection as soon as the answer comes, and what had not gone out then is lost.
        self.capture.hand_over(HAND_OVER_LIMIT)
        self.stop()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            self.log.debug("serve() is not on the main thread; SIGTERM is left to the application")
            return
        self._old_signals[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._old_signals[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)

    # The signal handlers only note what to log and wake wait(), taking no lock: they run on the
    # main thread between any two bytecodes, possibly inside a record being written, json's first
    # import or a lock's critical section; wait() logs the notes.
    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self._signal_notes.append((logging.DEBUG, "plugin received SIGTERM, stopping"))
        self.stopping.ask()

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.env.get(ENV_LISTEN) or self.config.network is not None:
            self._signal_notes.append((logging.DEBUG, "plugin received SIGINT, stopping"))
            self.stopping.ask()
        else:
            self._signal_notes.append((5, "plugin received interrupt signal, ignoring"))
            self.stopping.wake()

    def _host_gone(self) -> None:
        # The host's end of our stderr closed: it died (a Go plugin dies of SIGPIPE at its next log
        # line). Stop as on SIGTERM, the socket removed, instead of serving on for nobody.
        if not self.stopping.asked:  # told by the stdio pump's poll and a failed write alike
            self._signal_notes.append((logging.DEBUG, "the host closed the plugin's stderr (it died): stopping"))
        self.stop()

    def stop(self) -> None:
        self.stopping.stop()

    def wait(self) -> None:
        while True:
            stopped = self.stopping.wait_once()
            while self._signal_notes:
                self.log.log(*self._signal_notes.pop(0))
            if stopped:
                break
        self.log.debug("plugin server stopping")

    def _stop_grpc(self, server: grpc.Server) -> None:
        self.adds.close()  # first: from its stop on, grpcio frees what an addition would use (gatedserver.py)
        stop_server(server, STOP_GRACE)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # A go-plugin host kills the plugin 2 s after Shutdown: what is left of STOP_GRACE when the
        # server has stopped is all the asyncio handlers' loop gets (its threads are daemons: the
        # process exits without them, as a Go plugin whatever its goroutines do). Their own 2 s
        # cleanup, or 5 s for coroutines that ignore their cancel or block the loop, made the exit
        # a forced kill.
        stop_by = time.monotonic() + STOP_GRACE
        grpc_server, broker, listening = self.grpc, self.broker, self.listening
        # Every step runs even when an earlier one fails: the socket must go either way.
        steps: list[tuple[str, Callable[[], object]]] = [
            # a call still waiting for a slot would start its handler now, to be cut off by the exit
            ("waiting calls", self.gate.stop_waiting),
            ("health", self.health.close),
            ("stdio", self.capture.stop),  # gives fds 1 and 2 back and ends the StdioStream
        ]
        if listening is not None:  # before anything that may wait: a host's kill leaves them otherwise
            steps.append(("socket file", listening.remove_names))
        if broker is not None:  # ends the broker stream first: the graceful stop waits for open streams
            # brokered handlers still running are left to the process's exit, as the main server's are
            steps.append(("broker", lambda: broker.close(wait=False)))
        if grpc_server is not None:
            # unstarted after a failed set-up (a port taken): grpcio frees it only if started (unstarted.py)
            steps.append(("grpc server", lambda: self._stop_grpc(grpc_server)))
        if listening is not None:
            steps.append(("listener", listening.close))
        steps.append(("executor", lambda: self.executor.shutdown(wait=False, cancel_futures=True)))
        # at least LOOP_FLOOR: the loop's cleanup is scheduled and runs, still within go-plugin's 2 s
        steps.append(("asyncio handlers' loop",
                      lambda: self.gate.close(within=max(stop_by - time.monotonic(), LOOP_FLOOR))))
        if self.tls is not None:
            steps.append(("AutoMTLS context thread", self.tls.settle))
        try:
            for what, step in steps:
                try:
                    step()
                except Exception:
                    self.log.exception("plugin shutdown: closing the %s failed", what)
        finally:
            # Our handlers stay until here: a second SIGTERM during the graceful stop is only noted
            # instead of killing the plugin mid-stop with its socket file left behind.
            for signum, old in self._old_signals.items():
                signal.signal(signum, old)
            if self.config.network is not None and self.config.network.stop is not None:
                self.config.network.stop.detach(self.stop)
            self.stopping.close()
            self._logging.close()
