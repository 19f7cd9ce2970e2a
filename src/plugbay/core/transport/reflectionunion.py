"""One server reflection service answering for every registration of it on one server.

gRPC serves one handler per service name, but each plugin that opts into reflection registers its own
(docs/cli.md), naming its own services and descriptor pool. Served as the first registration alone, a
process of two reflecting plugins listed only the first one's services, and a client (grpcurl, plugbay
info) could not describe the second's. The server that takes services (core/plugin/gatedserver.py, and
core/broker/registrar.py for a brokered server) serves instead, under the first registration's name, a
handler that asks every registration: a list of services is the union of their lists (sorted,
each name once), so are an extendable type's extension numbers, and a file or symbol lookup is the first
answer that is not an error (when all are errors, the first registration's error). A registration that
fails (raises, or answers nothing) gives an error answer of its own, logged once, and the others answer.

Reflection clients (grpcurl, plugbay info) key files by name, so two plugins' pools that each hold a
different file of one name (two packages' plugin.proto) cannot both be described: nothing in the protocol
tells them apart. When a registration joins, its services' files are compared with the others', and such a
clash is logged as a WARNING naming the file.

Only a sync stream-stream ServerReflectionInfo (grpcio-reflection's ReflectionServicer) takes part; any
other handler for the name is left as it was: served when it is the first, dropped when not.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, message_factory

from plugbay.core.transport.handlerfail import SERVER_LOG
from plugbay.core.transport.handlerkind import behavior_of, is_async

Info = Callable[[Iterator[Any], Any], Iterable[Any]]  # a servicer's ServerReflectionInfo(requests, context)
_MERGED = ("list_services", "all_extension_numbers_of_type")  # asked of every member, their answers merged


class _Union:
    """The members of one reflection service name: each registration's ServerReflectionInfo."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._members: list[Info] = []
        self._files: list[dict[str, bytes]] = []  # each member's files (name -> FileDescriptorProto) when it joined
        self._clashes: set[str] = set()  # file names warned of
        self._failed: set[int] = set()  # members whose failure was logged (by id)

    def join(self, member: Info, request_type: type | None) -> None:
        if getattr(member, "__self__", None) is self:  # the union's own handler, registered again the other way
            return
        with self._lock:
            if member in self._members:  # generated code registers one servicer twice (generic, registered)
                return
            self._members.append(member)
        services, files = self._files_of(member, request_type) if request_type is not None else ([], {})
        with self._lock:
            clashes = sorted({name for other in self._files for name, content in files.items()
                              if other.get(name, content) != content} - self._clashes)
            self._clashes.update(clashes)
            self._files.append(files)
        for name in clashes:
            # reflection clients (grpcurl, plugbay info) key files by name: they keep one of the two
            SERVER_LOG.warning(
                "two plugins' reflection descriptor pools each hold a different file named %r (the second one's"
                " registration names %s): reflection clients key files by name, so a client that loaded one cannot"
                " describe the other's services; give each plugin's proto file a path of its own (e.g. a folder"
                " named for its package)", name, ", ".join(services) or _describe(member))

    def _files_of(self, member: Info, request_type: type) -> tuple[list[str], dict[str, bytes]]:
        """The services ``member`` lists, and the files it answers for them (with their dependencies), by name."""
        files: dict[str, bytes] = {}
        listed = self._ask(member, request_type(list_services=""), None, quiet=True)
        services = [service.name for service in listed.list_services_response.service]
        for service in listed.list_services_response.service:
            answer = self._ask(member, request_type(file_containing_symbol=service.name), None, quiet=True)
            for data in answer.file_descriptor_response.file_descriptor_proto:
                files[descriptor_pb2.FileDescriptorProto.FromString(data).name] = data
        return services, files

    def info(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        for request in requests:
            yield self._answer(request, context)

    def _answer(self, request: Any, context: Any) -> Any:
        with self._lock:
            members = list(self._members)
        kind = request.WhichOneof("message_request")
        if kind in _MERGED:
            answers = [self._ask(member, request, context) for member in members]
            good = [answer for answer in answers if not _is_error(answer)]
            if not good:
                return answers[0]
            if kind == "list_services":
                listed = {service.name for answer in good for service in answer.list_services_response.service}
                del good[0].list_services_response.service[:]
                for name in sorted(listed):  # sorted, as grpcio-reflection lists one registration's
                    good[0].list_services_response.service.add(name=name)
            else:
                numbers = {n for answer in good for n in answer.all_extension_numbers_response.extension_number}
                del good[0].all_extension_numbers_response.extension_number[:]
                good[0].all_extension_numbers_response.extension_number.extend(sorted(numbers))
            return good[0]
        asked = (self._ask(member, request, context) for member in members)
        first = next(asked)
        if not _is_error(first):
            return first
        return next((answer for answer in asked if not _is_error(answer)), first)

    def _ask(self, member: Info, request: Any, context: Any, *, quiet: bool = False) -> Any:
        """``member``'s answer to ``request`` alone (it answers each request of its stream with one response);
        a member that fails or answers nothing gives an error answer, so the others still answer (logged once
        unless ``quiet``: asked at join, with no call's context, a servicer may fail that answers calls)."""
        try:
            for answer in member(iter([request]), context):
                return answer
            failure = "it answered nothing"
        except Exception as exc:  # a plugin's servicer: its failure is its own answer's, not every plugin's
            failure = f"it raised {type(exc).__name__}: {exc}"
        with self._lock:
            first = not quiet and id(member) not in self._failed
            if not quiet:
                self._failed.add(id(member))
        if first:
            SERVER_LOG.warning("server reflection of %s failed (%s); the other plugins' reflection still answers",
                               _describe(member), failure)
        response = message_factory.GetMessageClass(
            request.DESCRIPTOR.file.message_types_by_name["ServerReflectionResponse"])()
        response.original_request.CopyFrom(request)
        response.error_response.error_code = grpc.StatusCode.INTERNAL.value[0]
        response.error_response.error_message = f"a plugin's reflection servicer failed: {failure}"
        return response


def _is_error(answer: Any) -> bool:
    return bool(answer.WhichOneof("message_response") == "error_response")


def _describe(member: Info) -> str:
    owner = getattr(member, "__self__", None)
    if owner is None:
        return repr(member)
    return f"{type(owner).__module__}.{type(owner).__qualname__} at {id(owner):#x}"


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
        union.join(behavior, _request_type(handler))
        return grpc.stream_stream_rpc_method_handler(union.info, request_deserializer=handler.request_deserializer,
                                                     response_serializer=handler.response_serializer)

    def generic(self, service: str, table: dict[str, Any]) -> Any:
        """A generic handler of ``service`` whose methods (``table``: path -> handler) are taken as take() does."""
        return grpc.method_handlers_generic_handler(
            service, {path.rsplit("/", 1)[1]: self.take(service, one) for path, one in table.items()})


def _request_type(handler: Any) -> type | None:
    """The request message class of a reflection method handler (to ask its servicer at join), if it has one."""
    try:
        return type(handler.request_deserializer(b"")) if handler.request_deserializer else None
    except Exception:  # a handler of its own making: taken without its files compared
        return None
