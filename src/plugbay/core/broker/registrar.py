"""The server a brokered service's ``register`` callback gets: services only, the broker owns the rest."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

from plugbay.errors import BrokerError


class Registrar(grpc.Server):  # type: ignore[misc]
    """What ``register`` gets in accept_and_serve: a started brokered server that takes services only.

    grpcio takes generic handlers on a started server but ignores
    registered-method handlers, so those are added as generic ones (what
    generated ``add_*Servicer_to_server`` code also adds). Binding, starting
    and stopping belong to the broker.
    """

    def __init__(self, server: grpc.Server) -> None:
        self._server = server
        self._services: set[str] = set()

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[Any]) -> None:
        handlers = tuple(generic_rpc_handlers)
        for handler in handlers:
            name = getattr(handler, "service_name", None)
            if callable(name):
                self._services.add(str(name()))
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict[str, Any]) -> None:
        if service_name in self._services:
            return  # generated code adds the same handlers generically first
        self.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, method_handlers),))

    def _refuse(self, what: str) -> BrokerError:
        return BrokerError(f"a brokered server's register callback called {what}(); the broker binds,"
                           " starts and stops brokered servers itself, so register only adds services"
                           " (add_*Servicer_to_server(servicer, server))")

    def add_insecure_port(self, address: str) -> int:
        raise self._refuse("add_insecure_port")

    def add_secure_port(self, address: str, server_credentials: Any) -> int:
        raise self._refuse("add_secure_port")

    def start(self) -> None:
        raise self._refuse("start")

    def stop(self, grace: float | None) -> Any:
        raise self._refuse("stop")

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        raise self._refuse("wait_for_termination")
