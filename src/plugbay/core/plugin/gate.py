"""A gate in front of the plugin's own handlers, so plugbay's services always answer.

grpcio binds one executor to a server, and a second server cannot share the
plugin's port (or its one multiplexed connection), so health and the
controller cannot get a pool of their own. Instead the executor has
``max_workers`` threads for the plugin's handlers plus ``RESERVED`` more, and
this interceptor lets at most ``max_workers`` of the plugin's handlers run at
once. A handler that outlives the host's deadline keeps its slot until it
returns; once every slot is taken, a new call to the plugin's services is
refused at once with RESOURCE_EXHAUSTED (blocking it would hold one of the
reserved threads). Health, GRPCController, GRPCStdio, GRPCBroker and (network
mode) Discovery pass the gate, so the host's health checks and Shutdown answer whatever the plugin's
handlers do. (grpcio's ``maximum_concurrent_rpcs`` counts every service alike,
so it cannot reserve anything for health.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

# Threads kept for plugbay's own services: the GRPCStdio and broker streams,
# health Watch streams, health checks, Shutdown, and refusing gated calls.
RESERVED = 16
DEFAULT_MAX_WORKERS = 32
_SEEN_MAX = 1024
PLUGBAY_SERVICES = ("/grpc.health.v1.Health/", "/plugin.GRPCController/", "/plugin.GRPCStdio/",
                    "/plugin.GRPCBroker/", "/plugbay.network.v1.Discovery/")


class HandlerGate(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuses a call to the plugin's services while ``limit`` of them are running."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)
        # method -> (the handler grpcio found, what this gate returns for it): a call to a method seen
        # before costs a lookup instead of a new handler and closure (this runs for every call)
        self._seen: dict[str, tuple[Any, Any]] = {}

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        seen = self._seen.get(method)
        if seen is not None and seen[0] is handler:
            return seen[1]
        gated = handler if str(method).startswith(PLUGBAY_SERVICES) else self._gate(handler)
        if len(self._seen) < _SEEN_MAX:  # bounded: a generic handler may answer any method name
            self._seen[method] = (handler, gated)
        return gated

    def _gate(self, handler: Any) -> Any:
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary), handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream), handler.request_deserializer,
                handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(handler.stream_stream), handler.request_deserializer, handler.response_serializer)

    def _enter(self, context: grpc.ServicerContext) -> None:
        if not self._slots.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"the plugin is already running {self.limit} calls (ServeConfig.max_workers);"
                          " earlier calls have not returned. Retry later; handlers that outlive their"
                          " deadline should check context.is_active()")

    def _unary(self, behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            self._enter(context)
            try:
                return behavior(request, context)
            finally:
                self._slots.release()
        return run

    def _streaming(self, behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]]) -> Callable[..., Any]:
        def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            self._enter(context)
            try:
                yield from behavior(request, context)
            finally:
                self._slots.release()
        return run
