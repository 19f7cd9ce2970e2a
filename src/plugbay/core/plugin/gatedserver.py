"""The server a plugin's grpc_server() registers on: handlers gated as they are added, none once it stopped.

grpcio (1.85) frees a sync server's C side once its stop() began, and add_insecure_port(),
add_secure_port() and add_registered_method_handlers() then reach the freed object: the whole process
dies (SIGSEGV, or an abort during the stop's grace). A plugin's code may keep the server grpc_server()
gave it and add to it later, from a thread of its own: after serve() returned, or after the network
host session that server was made for ended while serve() goes on. Its owner tells the AddGuard before
it stops the server, and from then on each addition (add_generic_rpc_handlers() too, which grpcio
takes and never serves) raises a ServerStoppedError saying so, instead of ending the process.

grpcio also takes a second registration of a service name without a word: its registered methods'
table keeps the last one, its generic handlers answer with the first. Two plugins in one process
that both register proto.KV (or a plugin that registers grpc.health.v1.Health, plugbay's own) then
answer each other's calls. grpc-go ends a Go plugin at such a registration ("found duplicate service
registration"); ServiceNames (core/transport/servicenames.py, which brokered servers share) refuses it with a
ConfigError, which serve() reports as a setup error. Server reflection is the exception: each plugin that opts
into it registers it, and one reflection service answers for them all (core/transport/reflectionunion.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import grpc

from plugbay.core.plugin.gate import PLUGBAY_SERVICES
from plugbay.core.transport.handlerkind import Transformed, is_async, method_table
from plugbay.core.transport.servicenames import REFLECTION_SERVICES, ServiceNames
from plugbay.errors import ConfigError, ServerStoppedError

if TYPE_CHECKING:
    from plugbay.core.plugin.gate import HandlerGate


class AddGuard:
    """Lets additions reach one gRPC server until close(), which its owner calls before stopping it.

    An addition holds the lock while grpcio runs it, so close() waits for one under way: grpcio's
    own lock does not keep an addition from a server its stop freed meanwhile."""

    def __init__(self, what: str = "the plugin's gRPC server") -> None:
        self.lock = threading.Lock()
        self.what = what
        self.closed = False

    def close(self) -> None:
        with self.lock:
            self.closed = True

    def refused(self, method: str) -> ServerStoppedError:
        return ServerStoppedError(
            f"{method}() on {self.what} after it stopped (serve() returned, the network host session it served"
            " ended, or its stop() was called): gRPC frees a stopped server, and this would crash the process."
            " Add services inside grpc_server() while serve() runs; a server of your own needs a grpc.server()"
            " of its own")


def plugin_service_names(reserve_own: bool = False) -> ServiceNames:
    """The service names of the plugin's server, whose second registration is a ConfigError (a setup error).

    ``reserve_own``: plugbay's own services (health, controller, stdio, broker) count as taken."""
    return ServiceNames(
        where="the plugin's server", error=ConfigError,
        advice="A service name is one registration's: gRPC cannot route its calls by plugin, and grpc-go refuses a"
               " second one too, even when each registers other methods of it. Register each service once: plugins"
               " that share a service need one servicer between them, or a service each",
        reserved=[path.strip("/") for path in PLUGBAY_SERVICES] if reserve_own else (),
        reserved_by="plugbay itself (a service of the go-plugin protocol)")


class GatedServer(grpc.Server):  # type: ignore[misc]
    """The server a plugin's grpc_server() registers on: each handler is gated as it is added.

    Not a server interceptor: with one, grpcio runs its interceptor pipeline on every call (the
    health checks and plugbay's streams too), about 30 us of a 0.8 ms KV Get on a loaded 2-core
    machine. Everything else goes to the real server; additions only until ``guard`` is closed
    (the module's doc), or this server's stop().
    """

    def __init__(self, server: grpc.Server, gate: HandlerGate, guard: AddGuard | None = None,
                 names: ServiceNames | None = None, owner: str = "the plugin's code") -> None:
        self._server = server
        self._gate = gate
        self._guard = guard if guard is not None else AddGuard()
        self._names = names if names is not None else plugin_service_names()
        self._owner = owner

    @contextmanager
    def _adding(self, method: str) -> Iterator[None]:
        """Held while ``method`` adds to the server: refused first (before any handler is gated) once stopped."""
        guard = self._guard
        with guard.lock:
            if guard.closed:
                raise guard.refused(method)
            yield

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Any) -> None:
        with self._adding("add_generic_rpc_handlers"):
            handlers = tuple(generic_rpc_handlers)
            tables = [method_table(handler) for handler in handlers]
            for table in tables:  # an async handler that cannot run is refused now, not at its first call
                for path, one in (table[1] if table else {}).items():
                    if is_async(one):
                        self._gate.gated(path, one)
            dropped = self._names.claim([table[0] if table else None for table in tables], "generic", self._owner)
            # every reflection registration joins the union; the first one's place serves it, later ones are not added
            handlers = tuple(self._names.reflection.generic(*table) if table and table[0] in REFLECTION_SERVICES
                             else handler for handler, table in zip(handlers, tables))
            handlers = tuple(handler for at, handler in enumerate(handlers) if at not in dropped)
            self._server.add_generic_rpc_handlers(tuple(Transformed(h, self._gate.gated) for h in handlers))

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict[str, Any]) -> None:
        with self._adding("add_registered_method_handlers"):
            dropped = self._names.claim([service_name], "registered", self._owner)
            if service_name in REFLECTION_SERVICES:  # joined to the union, which the first one serves
                method_handlers = {m: self._names.reflection.take(service_name, h) for m, h in method_handlers.items()}
            if dropped:
                return
            self._server.add_registered_method_handlers(
                service_name, {m: self._gate.gated(f"/{service_name}/{m}", h) for m, h in method_handlers.items()})

    def add_insecure_port(self, address: str) -> int:
        with self._adding("add_insecure_port"):
            return int(self._server.add_insecure_port(address))

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        with self._adding("add_secure_port"):
            return int(self._server.add_secure_port(address, server_credentials))

    def start(self) -> None:
        self._server.start()

    def stop(self, grace: float | None) -> Any:
        self._guard.close()
        return self._server.stop(grace)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return bool(self._server.wait_for_termination(timeout))
