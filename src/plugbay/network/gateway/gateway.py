"""Gateway: an unmodified go-plugin plugin served on the network as a shared service.

    with Gateway(GatewayConfig(cmd=["./kv-plugin"], cookie=("BASIC_PLUGIN", "hello"),
                               listen="0.0.0.0:7001", cert_file="tls.crt", key_file="tls.key",
                               client_ca_file="ca.crt", plugins=("kv_grpc",))) as gw:
        print(gw.address)   # hosts dial this over mutual TLS

The gateway is a host of its child (plugbay's Client: process runner,
AutoMTLS, a private unix socket; every child it starts, the shared one and each
session's, with ``die_with_host``, so a gateway killed outright takes them with
it) and a gRPC server on ``listen`` (TLS from the provided files, reloaded when
they change, through the same code as serve()'s network mode:
plugbay.core.plugin.network.bind). It serves itself:

* grpc.health.v1 "plugin" (and ""): SERVING while the child runs and answers its health checks
  (plugbay.network.gateway.probe, on the ``keepalive`` figures), else NOT_SERVING;
* plugbay.network.v1.Discovery: the child's negotiated app protocol version with
  the names given in ``plugins`` (empty when not given), ``multiplex`` as configured;
* plugin.GRPCController.Shutdown: acknowledged and ignored (a shared service;
  stop the gateway with SIGTERM);
* plugin.GRPCBroker.StartStream: FAILED_PRECONDITION on plain gRPC connections: the
  shared child cannot give every host its own broker. With ``multiplex=True``
  (a child that multiplexes, e.g. a plugbay plugin, which start() checks) a host that opens a yamux
  session gets its own child, spliced (plugbay.network.gateway.sessions);
* plugin.GRPCStdio.StreamStdio: an empty stream (the child's output is the gateway's log);

and forwards every other call to the child (plugbay.network.gateway.forward), at most
``max_calls`` at once, and at most ``max_peer_calls`` of them from one peer address (so one host
holding calls open cannot refuse every other's). The services above have slots and threads of their own,
taken before their request is read, and one connection may open at most NETWORK_MAX_STREAMS streams, as
on serve()'s network server (plugbay.core.plugin.gate): one peer holding streams whose request never
comes cannot take the threads they answer on.
While the child restarts (plugbay.network.gateway.child), and while it misses its health checks
(a new call is never sent to it then; one already forwarded keeps going), calls fail fast with
UNAVAILABLE.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self

import grpc

from plugbay._proto.plugin import (
    grpc_broker_pb2_grpc,
    grpc_controller_pb2,
    grpc_controller_pb2_grpc,
    grpc_stdio_pb2,
    grpc_stdio_pb2_grpc,
)
from plugbay.core.host.client import Client, ClientConfig
from plugbay.core.host.live import LoopHandoff
from plugbay.core.plugin.gate import NETWORK_MAX_STREAMS, NETWORK_WATCHES, HandlerGate, own_gate
from plugbay.core.plugin.gatedserver import GatedServer
from plugbay.core.plugin.health import NOT_SERVING, SERVING, HealthServicer
from plugbay.core.plugin.health import add_to_server as add_health
from plugbay.core.plugin.network import (
    DiscoveryServicer,
    NetworkServe,
    add_discovery,
    bind,
    package_version,
    serve_sessions,
)
from plugbay.core.plugin.server import SERVER_HANDSHAKE_TIMEOUT_MS
from plugbay.core.protocol.handshake import HandshakeConfig
from plugbay.core.transport import grpcping
from plugbay.core.transport.certfiles import CertFiles
from plugbay.core.transport.unstarted import stop_server
from plugbay.errors import ClientStateError, ConfigError, GatewayError, PlugbayError, TLSConfigError
from plugbay.network.gateway.child import ChildKeeper
# re-exported: imported from here by the package, plugbay and users
from plugbay.network.gateway.config import (
    DEFAULT_MAX_CALLS as DEFAULT_MAX_CALLS,
    DEFAULT_MAX_MESSAGE as DEFAULT_MAX_MESSAGE,
    GatewayConfig as GatewayConfig,
    gateway_said,
)
from plugbay.network.gateway.forward import Forwarder
from plugbay.network.gateway.sessions import ChildSession, MultiplexCheck, child_runner, die_with_gateway
from plugbay.network.gateway.starts import FairStarts

log = logging.getLogger("plugbay.gateway")

BROKER_REFUSAL = (
    "plugin does not multiplex brokered connections; the plugin behind this gateway is a go-plugin"
    " plugin that cannot carry brokered (callback) connections over the network. Use plugins without"
    " brokered callbacks through the gateway, or serve a plugbay plugin with NetworkServe"
)
# GRPCStdio streams held open at once (as NETWORK_WATCHES for health Watch streams)
_HELD_STDIO = 4
# Responses come from the child, which bounds them itself.
_MAX_SEND = 2**31 - 1
_STOP_GRACE = 2.0


class Gateway:
    """Serves one child plugin on the network; a context manager (start/stop)."""

    def __init__(self, config: GatewayConfig) -> None:
        if not isinstance(config, GatewayConfig):  # a dict or a str failed with a bare AttributeError
            raise ConfigError(f"Gateway takes a GatewayConfig, got {type(config).__name__}; pass for example"
                              " Gateway(GatewayConfig(cmd=['./kv-plugin'], cookie=('BASIC_PLUGIN', 'hello'),"
                              " cert_file=..., key_file=..., client_ca_file=...))")
        config.check()
        self.config = config
        self._network = NetworkServe(listen=config.listen, cert_file=config.cert_file, key_file=config.key_file,
                                     client_ca_file=config.client_ca_file, insecure=config.insecure,
                                     keepalive=config.keepalive, max_peer_sessions=config.max_peer_sessions)
        # all-or-none, and none only with insecure: checked before anything starts, not once the child runs
        if self._network.tls_files() is None and not config.insecure:
            raise TLSConfigError("the gateway needs cert_file, key_file and client_ca_file (--cert, --key,"
                                 " --client-ca) for mutual TLS; pass insecure=True (--insecure) only for a"
                                 " trusted test network")
        self.health = HealthServicer()
        self.health.set_status("", NOT_SERVING)
        self.health.set_status("plugin", NOT_SERVING)
        self.discovery = DiscoveryServicer([], multiplex=config.multiplex, server=(
            f"plugbay-gateway/{package_version()} (go-plugin plugin {config.argv[0]})"))
        self.keeper = ChildKeeper(self._client_config, config.restart, self._child_up, self._child_down,
                                  keepalive=config.keepalive)  # its health checks' figures
        self._closed = threading.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._server: grpc.Server | None = None
        self._serving = False  # the server was started (its bound port is released only by a stop)
        self.certs: CertFiles | None = None
        self._address = ""
        self._lock = threading.Lock()
        self._handoff = LoopHandoff()  # a stop() asked on the shared loop thread runs on its own thread
        self._started = False
        self._start_failed = False
        self._front: list[Callable[[], None]] = []
        self._check: MultiplexCheck | None = None  # start()'s check that the plugin multiplexes, while it runs
        self._stop_asked = threading.Event()
        # why brokering sessions are refused at once: a session's child announced no multiplexing
        self._sessions_refused = ""
        self._refusing = threading.Lock()
        self._starts = FairStarts(config.max_child_starts)  # the sessions' children start in turns

    @property
    def peer_calls(self) -> int:
        """Forwarded calls one peer address may have running at once."""
        cfg = self.config
        # all but a quarter by default: hosts behind one address (a NAT, a sidecar proxy) share it
        share = max(1, cfg.max_calls - cfg.max_calls // 4) if cfg.max_peer_calls is None else cfg.max_peer_calls
        return min(share, cfg.max_calls)

    def _session(self, conn: socket.socket, path: str, peer: str) -> ChildSession:
        cfg = self.config
        return ChildSession(conn, cfg.argv, cfg.cookie, cfg.protocol_versions, env=cfg.env, cwd=cfg.cwd,
                            start_timeout=cfg.start_timeout, logger=cfg.logger, peer=peer,
                            keepalive=cfg.keepalive, refused=self._sessions_refused,
                            trust_announced_address=cfg.trust_announced_address,
                            on_no_multiplex=self._no_multiplex, starts=self._starts)

    def _no_multiplex(self, why: str) -> None:
        """A session's child announced no multiplexing, though start()'s check saw the plugin do so (its
        file was replaced?): Discovery stops offering it, so that hosts call over plain gRPC, and later
        sessions are closed at once rather than each start a child only to stop it."""
        with self._refusing:  # not the gateway's lock: a teardown holds it while it joins sessions
            if self._sessions_refused:
                return
            self._sessions_refused = why
            self.discovery.multiplex = False
        log.error("gateway: %s. Discovery no longer offers multiplexing (hosts call over plain gRPC, without"
                  " brokered callbacks) and brokering sessions are refused until the gateway is restarted", why)

    # --- the child -----------------------------------------------------------------

    def _client_config(self) -> ClientConfig:
        cfg = self.config
        versions = sorted({int(v) for v in cfg.protocol_versions})
        return ClientConfig(handshake=HandshakeConfig(versions[-1], cfg.cookie[0], cfg.cookie[1]),
                            versioned_plugins={v: {} for v in versions}, auto_mtls=cfg.child_mtls,
                            runner=child_runner(cfg.argv, cfg.cwd),
                            start_timeout=cfg.start_timeout, call_timeout=None, env=dict(cfg.env),
                            trust_announced_address=cfg.trust_announced_address,
                            name="gateway-child", logger=cfg.logger)

    def _child_up(self, client: Client) -> None:
        self.discovery.versions = [(client.negotiated_version, list(self.config.plugins))]
        self.health.set_status("", SERVING)
        self.health.set_status("plugin", SERVING)

    def _child_down(self, why: str) -> None:
        self.health.set_status("", NOT_SERVING)
        self.health.set_status("plugin", NOT_SERVING)

    # --- lifecycle -----------------------------------------------------------------

    @property
    def address(self) -> str:
        """The bound listen address, HOST:PORT (the real port when ``listen`` asked for port 0)."""
        if self._start_failed:  # bound, but torn down again: nothing is served there
            raise ClientStateError("this Gateway failed to start, so it serves no address; make a new Gateway"
                                   " (see the error start() raised)")
        if not self._address:
            raise ClientStateError("Gateway.address is only known after start(); call start() first")
        return self._address

    @property
    def failed(self) -> threading.Event:
        """Set when the child kept dying and the gateway gave up restarting it."""
        return self.keeper.failed

    @property
    def child_pid(self) -> int | None:
        client = self.keeper.client
        pid = getattr(client.runner, "pid", None) if client is not None else None
        return pid if isinstance(pid, int) else None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the child, then listen. Typed errors (and nothing left running) on failure."""
        with self._lock:
            # closed first: a failed start also set _started, and must not pass for a running gateway
            if self._start_failed:
                raise ClientStateError("this Gateway failed to start and was torn down; make a new Gateway")
            if self._closed.is_set():
                raise ClientStateError("this Gateway was stopped; make a new one")
            if self._started:
                return
            self._started = True
            if not die_with_gateway():
                log.warning("gateway: util-linux's setpriv is not installed, so a gateway killed outright"
                            " (SIGKILL, the OOM killer) leaves its children running; install util-linux")
            try:
                self._start()
            except BaseException:
                self._start_failed = True
                self._teardown()
                raise

    def _start(self) -> None:
        cap = self.config.max_calls
        own = own_gate("gateway", per_peer=True)  # one peer address at most a share (behind the front too)
        # threads: the forwarded calls', the own services' slots, and a few to refuse calls on
        self._executor = ThreadPoolExecutor(max_workers=cap + own.limit + 4, thread_name_prefix="plugbay-gateway-rpc")
        gate = HandlerGate(cap, refusal=(
            f"the gateway is already forwarding {cap} calls to its plugin (--max-calls,"
            " PLUGBAY_GATEWAY_MAX_CALLS); earlier calls have not returned. Retry later, or run the gateway"
            " with a higher --max-calls"), peer_limit=self.peer_calls,
            peer_refusal=f"{{peer}} already has {{held}} calls forwarded by the gateway, the most one peer address"
            f" may (--max-peer-calls {self.peer_calls}, PLUGBAY_GATEWAY_MAX_PEER_CALLS), so that other hosts'"
            " calls still get through; earlier calls have not returned. Retry later, or raise --max-peer-calls")
        server = grpc.server(self._executor, options=[
            ("grpc.so_reuseport", 0), ("grpc.max_send_message_length", _MAX_SEND),
            # as serve()'s: a connection that never completes TLS is closed then, not held 120 s (with no
            # cap and no certificate needed, silent connections could take every descriptor)
            ("grpc.server_handshake_timeout_ms", SERVER_HANDSHAKE_TIMEOUT_MS),
            ("grpc.max_concurrent_streams", NETWORK_MAX_STREAMS),
            ("grpc.max_receive_message_length", self.config.max_message),
            *grpcping.server_options(self.config.keepalive)])  # hosts' keepalive pings are welcome
        self._server = server
        gated = GatedServer(server, own)
        add_health(self.health, gated, watches=NETWORK_WATCHES)  # Watch streams hold own slots
        add_discovery(self.discovery, gated)
        grpc_controller_pb2_grpc.add_GRPCControllerServicer_to_server(  # type: ignore[no-untyped-call]
            _Controller(), gated)
        grpc_broker_pb2_grpc.add_GRPCBrokerServicer_to_server(_NoBroker(), gated)  # type: ignore[no-untyped-call]
        grpc_stdio_pb2_grpc.add_GRPCStdioServicer_to_server(_Stdio(self._closed), gated)  # type: ignore[no-untyped-call]
        server.add_generic_rpc_handlers((Forwarder(self.keeper.channel, gate, self.keeper.answering,
                                                   self.keeper.exit_of),))
        # TLS files are checked before the child starts
        if self.config.multiplex:
            _, self._address, self._front, self.certs = serve_sessions(server, self._network, self._session)
        else:
            _, self._address, self.certs = bind(server, self._network)
        if self.config.multiplex:
            self._check_multiplexing()
        try:
            self.keeper.start()
        except PlugbayError as exc:  # the advice ClientConfig's user gets is no gateway user's to take
            raise GatewayError(f"the gateway could not start its plugin {self.config.argv}:"
                               f" {gateway_said(exc)}") from exc
        server.start()
        self._serving = True
        log.info("gateway: serving plugin %s on %s (%s)", self.config.argv[0], self._address,
                 "PLAINTEXT" if self.config.insecure else "mutual TLS")

    def _check_multiplexing(self) -> None:
        # a plugin that cannot multiplex would fail every host that takes Discovery's offer: each such
        # host waited out its start_timeout on sessions the gateway closed, and was told only "Socket closed"
        cfg = self.config
        check = MultiplexCheck(cfg.argv, cfg.cookie, cfg.protocol_versions, env=cfg.env, cwd=cfg.cwd,
                               start_timeout=cfg.start_timeout, logger=cfg.logger)
        self._check = check
        try:
            if self._stop_asked.is_set():  # a stop() that came before the check was set above
                check.abort()
            check.run()
        finally:
            self._check = None

    def stop(self) -> None:
        """Stop listening (in-flight calls get a short grace), then stop the child. Idempotent."""
        # a start() holds the lock until its child answers: a child still starting is ended first, so
        # that start() fails now (it was stopped) and this stop does not wait out start_timeout
        self.keeper.abort_start()
        self._stop_asked.set()
        if (check := self._check) is not None:  # the same for start()'s multiplexing check
            check.abort()
        # asked on the shared loop thread (a logging handler): the teardown waits on that loop (the
        # child's pipes, its exit), so it runs on a thread of its own, as a Client's kill() does there
        if self._handoff.start("plugbay-gateway-stop", self._stop, self._closed.is_set()):
            return
        self._stop()
        self._handoff.join()

    def _stop(self) -> None:
        with self._lock:
            if self._closed.is_set():
                return
            self._teardown()

    def _teardown(self) -> None:
        self._closed.set()
        self.health.close()
        if self._server is not None:
            # one never started (a failed start's) is started to be stopped at once: grpcio's stop() of it
            # does nothing, and its bound listen port stayed open for the life of the process
            stop_server(self._server, _STOP_GRACE if self._serving else 0)
        while self._front:  # the brokering front: its sessions and their children
            try:
                self._front.pop()()
            except Exception:
                log.exception("gateway: closing the brokering front failed")
        self.keeper.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)


class _Controller(grpc_controller_pb2_grpc.GRPCControllerServicer):
    def Shutdown(self, request: grpc_controller_pb2.Empty,
                 context: grpc.ServicerContext) -> grpc_controller_pb2.Empty:
        log.warning("gateway: GRPCController.Shutdown from %s ignored: the plugin is a shared network"
                    " service; stop the gateway with SIGTERM", context.peer())
        return grpc_controller_pb2.Empty()


class _NoBroker(grpc_broker_pb2_grpc.GRPCBrokerServicer):
    def StartStream(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, BROKER_REFUSAL)


class _Stdio(grpc_stdio_pb2_grpc.GRPCStdioServicer):
    """Empty streams. Every attached go-plugin host keeps one open, each holding one of the
    own services' slots, so past _HELD_STDIO of them a stream ends at once (still empty, status OK:
    go-plugin's and plugbay's readers just stop) rather than take the threads health answers on."""

    def __init__(self, closed: threading.Event) -> None:
        self._closed = closed
        self._slots = threading.BoundedSemaphore(_HELD_STDIO)

    def StreamStdio(self, request: object, context: grpc.ServicerContext) -> Iterator[grpc_stdio_pb2.StdioData]:
        if not self._slots.acquire(blocking=False):
            return
        try:
            while context.is_active() and not self._closed.wait(0.5):
                pass
        finally:
            self._slots.release()
        yield from ()
