"""Network mode for serve(): a plugin as a shared service on HOST:PORT, over provided mutual TLS.

    serve(ServeConfig(handshake=HANDSHAKE, plugins=PLUGINS,
                      network=NetworkServe(listen="0.0.0.0:7001", cert_file="/tls/tls.crt",
                                           key_file="/tls/tls.key", client_ca_file="/tls/ca.crt")))

What changes against a plugin its host launched:

* the listener is ``listen`` (``HOST:PORT``, port 0 picks one; or ``unix:/path``),
  TLS uses the provided files (plugbay.core.transport.certfiles: reloaded when
  they change on disk) and requires a client certificate the client CA signed;
  ``insecure=True`` serves plaintext and logs a warning;
* there is no host to set the magic cookie or PLUGIN_PROTOCOL_VERSIONS: the
  cookie is not required, and the highest app protocol version is served
  (PLUGIN_PROTOCOL_VERSIONS still narrows it when set);
* plugbay.network.v1.Discovery answers what the handshake line would have said;
* GRPCController.Shutdown is acknowledged but ignored unless ``allow_shutdown``:
  the service is shared by many hosts; SIGTERM/SIGINT stop it, and, for a serve()
  on a thread of the program's own (no signal handler there), ``NetworkServe(stop=
  ServeStop())`` and its ``stop()`` (plugbay.core.plugin.netconfig);
* ``NetworkServe.from_env`` (plugbay.core.plugin.netconfig) turns an unmodified
  plugin into a network one: serve() uses it when PLUGBAY_NETWORK_LISTEN is set
  (plus PLUGBAY_NETWORK_CERT, PLUGBAY_NETWORK_KEY, PLUGBAY_NETWORK_CLIENT_CA or
  PLUGBAY_NETWORK_INSECURE=1);
* stdout/stderr are not captured (they are the container's log); the handshake
  line is still printed on stdout, with the bound address, for scripts and tests.

Brokered connections: with TLS (and ``multiplex=True``, the default) the
listener is serve()'s network front (plugbay.core.plugin.netmux): after TLS a
connection is either plain gRPC (the HTTP/2 preface) or a yamux session from a
host that wants brokering, which gets its own plugin instance; Discovery says
``multiplex=True``. ``multiplex=False`` (PLUGBAY_NETWORK_MULTIPLEX=0) and
``insecure`` serve plain gRPC only, TLS in grpcio, ``multiplex=False``.

The shared server (plain gRPC) has no broker: its GRPCBroker.StartStream fails with
FAILED_PRECONDITION, and its plugins' broker refuses to dial or serve (BrokerError). A per-connection
broker there would dial whatever address a peer announced on its stream (any host the plugin's
machine reaches, any local socket); brokering hosts use their sessions' brokers, which never dial
an address (their connections are streams of the session).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from plugbay._proto.plugbay import discovery_pb2, discovery_pb2_grpc
from plugbay._proto.plugin import grpc_broker_pb2_grpc
from plugbay.core.broker.broker import GRPCBroker
from plugbay.core.broker.brokertransport import BrokerTransport
from plugbay.core.broker.stream import plugin_broker
from plugbay.core.plugin.gate import RESERVED, HandlerGate
from plugbay.core.plugin.gatedserver import AddGuard
from plugbay.core.protocol.handshake import CORE_PROTOCOL_VERSION, PROTOCOL_GRPC
from plugbay.core.plugin.netconfig import NetworkServe as NetworkServe  # its public home stays here
from plugbay.core.plugin.netconfig import listen_target as _target
from plugbay.core.plugin.frontsession import Instance, InstanceFactory, SessionFactory, instance_sessions
from plugbay.core.plugin.netmux import NetworkFront
from plugbay.core.plugin.serveconfig import ServeConfig
from plugbay.core.transport.grpcoptions import with_defaults
from plugbay.core.transport.keepalive import Keepalive
from plugbay.core.transport.sockets import (
    check_unix_path,
    close_listener,
    listener_address,
    open_listener,
    unix_target,
    unlink_quietly,
)
from plugbay.core.transport.tempdirs import make_tempdir
from plugbay.core.transport.unstarted import ready_to_stop
from plugbay.core.transport.workers import DaemonPool
from plugbay.errors import BrokerError, ConfigError

if TYPE_CHECKING:  # imported where used: a plugin the host launches never loads it
    from plugbay.core.transport import certfiles
    from plugbay.core.transport.muxsession import MuxSession

# serve()'s registration of its services on a server: (server, broker, the plugins' gate, own services' server)
Register = Callable[[grpc.Server, GRPCBroker, HandlerGate, grpc.Server, AddGuard], None]

BROKER_REFUSAL = (
    "this plain gRPC connection to a network plugin has no broker: brokered connections (callbacks such as"
    " the counter example's AddHelper) travel in a host's own multiplexed session to the plugin (a RemoteClient"
    " opens one when Discovery says multiplex=true: the plugin served over TLS with NetworkServe(multiplex=True),"
    " the default). Use such a session, or calls without brokered connections")


def bind(server: grpc.Server, network: NetworkServe) -> tuple[str, str, certfiles.CertFiles | None]:
    """Bind ``server`` (not started) where ``network`` says; return (network, address, cert files)."""
    from plugbay.core.transport import certfiles

    files = network.tls_files()
    if files is not None and network.insecure:
        raise ConfigError("NetworkServe got TLS files and insecure=True; choose one (drop insecure"
                          " to serve mutual TLS)")
    creds, certs = certfiles.server_credentials(files, network.insecure)
    target, kind = _target(network.listen)
    if kind == "unix":
        path = target[len("unix:"):]
        check_unix_path(path, "choose a shorter path")
        target = unix_target(path)
    try:
        port = server.add_insecure_port(target) if creds is None else server.add_secure_port(target, creds)
    except RuntimeError as exc:
        raise ConfigError(listen_failure(network.listen, kind, path if kind == "unix" else target, exc)) from None
    if kind == "unix":
        return "unix", path, certs
    host = target.rpartition(":")[0]
    return "tcp", f"{host}:{port}", certs


# what to do when the OS refuses to listen (grpcio's own error says only "Failed to bind", its reason goes
# to its log: "Address already in use" for a unix path whose folder is missing read "free the port")
_LISTEN_ADVICE = {
    errno.EADDRINUSE: "another process listens there: stop it, or choose another address (port 0: any free one)",
    errno.ENOENT: "its folder does not exist: create it, or choose another path",
    errno.EACCES: "permission denied: choose a port from 1024 up (lower ones need CAP_NET_BIND_SERVICE), or a"
                  " folder this user may write",
    errno.EADDRNOTAVAIL: "no interface of this machine has that address: listen on one of its own, or 0.0.0.0",
}


def listen_failure(listen: str, kind: str, address: str, exc: Exception) -> str:
    """Why listening on ``listen`` failed, and what to do. For grpcio's error (a RuntimeError without the
    OS's reason) a listener of our own is bound there once, to learn it."""
    failure: Exception | None = exc
    if not isinstance(exc, OSError):
        try:
            close_listener(open_listener(kind, address))
            failure = None  # it binds now (the other listener just left): grpcio's words it is
        except (OSError, ValueError) as probed:
            failure = probed
    code = getattr(failure, "errno", None)
    reason = getattr(failure, "strerror", None) or failure or exc
    if isinstance(failure, socket.gaierror):  # its codes are not errno's (-2 is EAI_NONAME)
        return (f"couldn't listen on {listen!r}: {reason}; the host name does not resolve: use an IP of this"
                " machine or a name it resolves")
    if code in _LISTEN_ADVICE:
        advice = _LISTEN_ADVICE[code]
        if kind == "tcp" and ":" in address.rpartition(":")[0]:  # an IPv6 host: its any-address is [::]
            advice = advice.replace("0.0.0.0", "[::]")
        return f"couldn't listen on {listen!r}: {os.strerror(code)}; {advice}"
    return f"couldn't listen on {listen!r}: {reason}; free the port or choose another listen address"


def serve_front(server: grpc.Server, network: NetworkServe,
                make_instance: InstanceFactory) -> tuple[str, str, list[Callable[[], None]]]:
    """Bind ``server`` (not started) privately behind the brokering front on ``network.listen``.

    Each host session gets an instance from ``make_instance``. Returns (network,
    address, cleanups to run in reverse order on shutdown).
    """
    write_timeout = Keepalive.of(network.keepalive, "NetworkServe keepalive").write_timeout
    kind, address, cleanups, _ = serve_sessions(server, network, instance_sessions(make_instance, write_timeout))
    return kind, address, cleanups


def serve_sessions(server: grpc.Server, network: NetworkServe, make_session: SessionFactory
                   ) -> tuple[str, str, list[Callable[[], None]], certfiles.CertFiles]:
    """serve_front() with any per-session handler (the gateway splices sessions to its own children)."""
    from plugbay.core.transport import certfiles

    certs = certfiles.front_certs(network.tls_files())
    target, kind = _target(network.listen)
    address = target[len("unix:"):] if kind == "unix" else target
    if kind == "unix":
        check_unix_path(address, "choose a shorter path")
    try:
        listener = open_listener(kind, address)
    except OSError as exc:
        raise ConfigError(listen_failure(network.listen, kind, address, exc)) from None
    private = make_tempdir("plugbay-net-")
    cleanups: list[Callable[[], None]] = [lambda: shutil.rmtree(private, ignore_errors=True)]
    try:
        grpc_path = os.path.join(private, "grpc.sock")
        try:
            server.add_insecure_port(unix_target(grpc_path))
        except RuntimeError:
            raise ConfigError(f"couldn't listen on the private unix socket {grpc_path!r} (longer than the"
                              " 107 bytes the OS allows, or an unwritable folder); set TMPDIR to a short,"
                              " writable folder") from None
        front = NetworkFront(listener, certs, ("unix", grpc_path), make_session, private, network.keepalive,
                             network.max_peer_sessions)
    except BaseException:
        close_listener(listener)
        cleanups[0]()
        raise
    cleanups.append(front.close)
    bound_kind, bound = listener_address(listener)
    return bound_kind, bound, cleanups, certs


def package_version() -> str:
    import importlib.metadata  # only when a Describe asks (a 20+ ms import for every plugin otherwise)

    try:
        return importlib.metadata.version("plugbay")
    except importlib.metadata.PackageNotFoundError:  # a source checkout on sys.path, not installed
        return "0"


class DiscoveryServicer(discovery_pb2_grpc.DiscoveryServicer):
    """plugbay.network.v1.Discovery: the facts a remote host would read from the handshake line."""

    def __init__(self, versions: Sequence[tuple[int, Sequence[str]]], *, multiplex: bool = False,
                 server: str = "") -> None:
        self.versions = list(versions)
        self.multiplex = multiplex
        self.server = server or f"plugbay/{package_version()}"

    def Describe(self, request: discovery_pb2.DescribeRequest,
                 context: grpc.ServicerContext) -> discovery_pb2.DescribeResponse:
        return discovery_pb2.DescribeResponse(
            core_protocol=CORE_PROTOCOL_VERSION, protocol=PROTOCOL_GRPC,
            versions=[discovery_pb2.VersionedPluginSet(version=v, plugins=list(names))
                      for v, names in self.versions],
            multiplex=self.multiplex, server=self.server)


def add_discovery(servicer: DiscoveryServicer, server: grpc.Server) -> None:
    discovery_pb2_grpc.add_DiscoveryServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]


class _NoBrokerStream(grpc_broker_pb2_grpc.GRPCBrokerServicer):
    def StartStream(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, BROKER_REFUSAL)


class SharedBroker(GRPCBroker):
    """The broker the plugins on the shared server get: none, refused with what works instead."""

    def __init__(self) -> None:
        super().__init__(BrokerTransport(), "plugin")

    def accept_and_serve(self, id: int, register: Callable[[grpc.Server], None], *, loop: Any = None) -> None:
        raise BrokerError(BROKER_REFUSAL)

    def dial(self, id: int, timeout: float | None = None) -> grpc.Channel:
        raise BrokerError(BROKER_REFUSAL)


def refuse_broker(server: grpc.Server) -> GRPCBroker:
    """No broker on the shared ``server``: StartStream refused; the returned broker is its plugins'."""
    grpc_broker_pb2_grpc.add_GRPCBrokerServicer_to_server(_NoBrokerStream(), server)  # type: ignore[no-untyped-call]
    return SharedBroker()


def session_instance(config: ServeConfig, versions: Sequence[tuple[int, Sequence[str]]], register: Register,
                     mux: MuxSession, path: str) -> Instance:
    """A network host session's own plugin instance: a private server on ``path`` with serve()'s services
    (``register``) and Discovery, and a broker multiplexed on the session ``mux``."""
    # each session's handlers are gated like the main server's, on a pool of its own
    executor = DaemonPool(config.handler_limit() + RESERVED, "plugbay-grpc-session")
    options = with_defaults([("grpc.so_reuseport", 0)], config.grpc_server_options)
    server = grpc.server(executor, options=options)
    broker = plugin_broker(server, BrokerTransport(multiplex=True, mux=mux))
    gate = HandlerGate(config.handler_limit())
    # the session's plugins' code may keep its server past the session (gatedserver.py)
    adds = AddGuard("the network host session's gRPC server")
    try:
        register(server, broker, gate, server, adds)
        add_discovery(DiscoveryServicer(versions, multiplex=True), server)
        server.add_insecure_port(unix_target(path))
        server.start()
    except BaseException:
        ready_to_stop(server)  # a server never started is never freed (core/transport/unstarted.py)
        _stop_instance(server, broker, executor, gate, adds, path)
        raise
    return Instance(("unix", path), lambda: _stop_instance(server, broker, executor, gate, adds, path))


def _stop_instance(server: grpc.Server, broker: GRPCBroker, executor: DaemonPool, gate: HandlerGate,
                   adds: AddGuard, path: str) -> None:
    adds.close()
    # ends the broker stream first (a graceful stop waits for open streams); not waited for, as below
    broker.close(wait=False)
    server.stop(0.5).wait(5)
    # not waited for: a handler the departed host left running (stuck, sleeping) ends on its own;
    # waiting here held up the admission of every new host (sessions are reaped on that thread)
    executor.shutdown(wait=False, cancel_futures=True)
    gate.close()
    unlink_quietly(path)
