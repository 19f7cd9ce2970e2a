"""What the servers that take handlers (the plugin's gate, a brokered server's registrar) share:
whether a gRPC method handler is written for asyncio (asked before they load
plugbay.core.transport.aiohandlers, which only an asyncio servicer needs), a generated service's
table of methods, and a generic handler whose answers are changed once per method.
"""

from __future__ import annotations

import inspect  # loaded by grpcio already
from collections.abc import Callable
from typing import Any

import grpc

KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def behavior_of(handler: Any) -> tuple[str, Any]:
    """(kind, behavior) of a grpc.RpcMethodHandler; ("", None) when it has none."""
    for kind in KINDS:
        behavior = getattr(handler, kind, None)
        if behavior is not None:
            return kind, behavior
    return "", None


def is_async(handler: Any) -> bool:
    """An ``async def`` behavior: a coroutine function or an async generator function."""
    behavior = behavior_of(handler)[1]
    return inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)


def method_table(handler: Any) -> tuple[str, dict[str, Any]] | None:
    """(service, {"/service/Method": method handler}) of grpc.method_handlers_generic_handler's kind
    (what generated code registers); None for any other generic handler."""
    table = getattr(handler, "_method_handlers", None)
    name = getattr(handler, "service_name", None)
    if not isinstance(table, dict) or not callable(name):
        return None
    service = str(name())
    # grpcio keys its table by full path; an older one keyed it by method name
    return service, {key if key.startswith("/") else f"/{service}/{key}": one for key, one in table.items()}


class Transformed(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A generic handler whose answers pass ``transform(method, handler)``: once per method and
    answer, then looked up (a bounded cache, as a generic handler may answer any method name)."""

    _SEEN_MAX = 1024

    def __init__(self, inner: grpc.GenericRpcHandler, transform: Callable[[str, Any], Any]) -> None:
        self._inner = inner
        self._transform = transform
        self._seen: dict[str, tuple[Any, Any]] = {}  # method -> (the handler it answered, the transformed)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = str(handler_call_details.method)
        seen = self._seen.get(method)
        if seen is not None and seen[0] is handler:
            return seen[1]
        transformed = self._transform(method, handler)
        if len(self._seen) < self._SEEN_MAX:
            self._seen[method] = (handler, transformed)
        return transformed
