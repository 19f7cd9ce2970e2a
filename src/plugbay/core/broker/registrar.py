"""The server a brokered service's ``register`` callback gets: services only, the broker owns the rest."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc

from plugbay.core.transport.handlerfail import answered
from plugbay.core.transport.handlerkind import Transformed, is_async, method_table
from plugbay.core.transport.servicenames import REFLECTION_SERVICES, ServiceNames
from plugbay.errors import BrokerError

if TYPE_CHECKING:
    from plugbay.core.transport.aiohandlers import LoopSource

log = logging.getLogger("plugbay.broker")  # a brokered server's, on the host's side or the plugin's


class Registrar(grpc.Server):  # type: ignore[misc]
    """What ``register`` gets in accept_and_serve: a started brokered server that takes services only.

    grpcio takes generic handlers on a started server but ignores
    registered-method handlers, so those are added as generic ones (what
    generated ``add_*Servicer_to_server`` code also adds). Binding, starting
    and stopping belong to the broker.

    ``async def`` handlers (an asyncio servicer) run on the loop ``handler_loop()`` gives
    (plugbay.core.transport.aiohandlers), asked for when the first one is registered.

    A service registered twice the same way (generic handlers, or registered methods) is a BrokerError, as
    it is a setup error on the plugin's server (both keep ServiceNames): grpcio would answer with the first
    servicer, silently. Server reflection is the exception there as here: every registration of it joins one
    reflection service that answers for them all (core/transport/reflectionunion.py).
    """

    def __init__(self, server: grpc.Server, handler_loop: Callable[[], LoopSource]) -> None:
        self._server = server
        self._names = ServiceNames(
            where="a brokered server", error=BrokerError,
            advice="its register callback adds each service once (one add_*Servicer_to_server call per service)")
        self._make_loop = handler_loop
        self._loop: LoopSource | None = None
        self._lock = threading.Lock()

    def _handler_loop(self) -> LoopSource:
        # one source (and one hold on the process loop) per server, however many handlers ask
        with self._lock:
            if self._loop is None:
                self._loop = self._make_loop()
            return self._loop

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[Any]) -> None:
        given = tuple(generic_rpc_handlers)
        handlers = tuple(self._runnable(h) for h in given)
        names = [str(name()) if callable(name) else None
                 for name in (getattr(h, "service_name", None) for h in handlers)]
        dropped = self._names.claim(names, "generic")  # all or none noted: a refused batch leaves no name taken
        for at, table in enumerate(method_table(h) for h in given):  # each reflection registration joins the
            if table and table[0] in REFLECTION_SERVICES:  # union, which the first one's place serves
                handlers = (*handlers[:at], self._runnable(self._names.reflection.generic(*table)), *handlers[at + 1:])
        self._server.add_generic_rpc_handlers(tuple(h for at, h in enumerate(handlers) if at not in dropped))

    def _runnable(self, handler: Any) -> Any:
        """``handler``, with a table of methods (generated code's) rebuilt of adapted ones (async ones run
        on the sync server, failures answered); any other generic handler adapts what it answers, call by call."""
        service = method_table(handler)
        if service is None:
            return Transformed(handler, self._adapted)
        name, table = service
        return grpc.method_handlers_generic_handler(
            name, {path.rsplit("/", 1)[1]: self._adapted(path, one) for path, one in table.items()})

    def _adapted(self, method: str, handler: Any) -> Any:
        """``handler`` with its failures answered (a sys.exit() in it too), on the loop when ``async def``."""
        if not is_async(handler):
            return answered(handler, log)
        from plugbay.core.transport.aiohandlers import sync_handler

        return answered(sync_handler(method, handler, self._handler_loop()), log)

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict[str, Any]) -> None:
        # a name taken this way already: claim() raises (nothing added) or, for reflection, reports it dropped
        if service_name in REFLECTION_SERVICES:  # joined to the union, which the first one serves
            method_handlers = {m: self._names.reflection.take(service_name, h) for m, h in method_handlers.items()}
        if self._names.taken(service_name, "registered") and self._names.claim([service_name], "registered"):
            return
        if not self._names.taken(service_name, "generic"):  # generated code adds the same handlers generically first
            self.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, method_handlers),))
        self._names.claim([service_name], "registered")  # noted once added: a failed add leaves the name free

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
