"""One server reflection service answering for every registration of it on one server.

gRPC serves one handler per service name, but each plugin that opts into reflection registers its own
(docs/cli.md), naming its own services and descriptor pool. Served as the first registration alone, a
process of two reflecting plugins listed only the first one's services, and a client (grpcurl, plugbay
info) could not describe the second's. The server that takes services (core/plugin/gatedserver.py, and
core/broker/registrar.py for a brokered server) serves instead, under the first registration's name, a
handler that asks every registration: a list of services is the union of their lists (sorted,
each name once), and a file or symbol lookup is the first answer that is not an error (when all
are errors, the first registration's error).

Only a sync stream-stream ServerReflectionInfo (grpcio-reflection's ReflectionServicer) takes part; any
other handler for the name is left as it was: served when it is the first, dropped when not.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc

from plugbay.core.transport.handlerkind import behavior_of, is_async

Info = Callable[[Iterator[Any], Any], Iterable[Any]]  # a servicer's ServerReflectionInfo(requests, context)


class _Union:
    """The members of one reflection service name: each registration's ServerReflectionInfo."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._members: list[Info] = []

    def join(self, member: Info) -> None:
        if getattr(member, "__self__", None) is self:  # the union's own handler, registered again the other way
            return
        with self._lock:
            if member not in self._members:  # generated code registers one servicer twice (generic, registered)
                self._members.append(member)

    def info(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        for request in requests:
            yield self._answer(request, context)

    def _answer(self, request: Any, context: Any) -> Any:
        with self._lock:
            members = list(self._members)
        if request.WhichOneof("message_request") == "list_services":
            first = _ask(members[0], request, context)
            listed = {service.name for service in first.list_services_response.service}
            for member in members[1:]:
                listed.update(service.name for service in _ask(member, request, context).list_services_response.service)
            del first.list_services_response.service[:]
            for name in sorted(listed):  # sorted, as grpcio-reflection lists one registration's
                first.list_services_response.service.add(name=name)
            return first
        answers = (_ask(member, request, context) for member in members)
        first = next(answers)
        if first.WhichOneof("message_response") != "error_response":
            return first
        return next((answer for answer in answers if answer.WhichOneof("message_response") != "error_response"),
                    first)


def _ask(member: Info, request: Any, context: Any) -> Any:
    """``member``'s answer to ``request`` alone (it answers each request of its stream with one response)."""
    return next(iter(member(iter([request]), context)))


class ReflectionUnion:
    """The reflection services of one server, by service name (v1alpha and v1 answer in their own messages)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._unions: dict[str, _Union] = {}

    def take(self, service: str, handler: Any) -> Any:
        """``handler`` (of ``service``'s method) joined to the service's union; returns the handler to serve,
        which answers for every registration joined (``handler`` itself when it cannot take part)."""
        kind, behavior = behavior_of(handler)
        if kind != "stream_stream" or is_async(handler):
            return handler
        with self._lock:
            union = self._unions.setdefault(service, _Union())
        union.join(behavior)
        return grpc.stream_stream_rpc_method_handler(union.info, request_deserializer=handler.request_deserializer,
                                                     response_serializer=handler.response_serializer)

    def generic(self, service: str, table: dict[str, Any]) -> Any:
        """A generic handler of ``service`` whose methods (``table``: path -> handler) are taken as take() does."""
        return grpc.method_handlers_generic_handler(
            service, {path.rsplit("/", 1)[1]: self.take(service, one) for path, one in table.items()})
