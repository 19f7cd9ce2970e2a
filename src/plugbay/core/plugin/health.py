"""grpc.health.v1.Health for the plugin side.

go-plugin's host pings the plugin with Check(service="plugin"); a Go host
fails its Ping() without it. Watch streams the status and ends when the
server shuts down, so a graceful stop never waits on a watcher.

The generated health code is imported at the first call, not at the start: a
go-plugin host may never check (go-plugin 1.0.1 pings only when asked to), and
its import (the proto file's descriptors, four packages) came before every
plugin's handshake line.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from plugbay.core.protocol.handshake import BROKER_QUEUES_METADATA

if TYPE_CHECKING:
    from plugbay._proto.grpc.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

SERVICE_NAME = "plugin"  # go-plugin's GRPCServiceName
SERVICE = "grpc.health.v1.Health"

Status = int  # grpc.health.v1 HealthCheckResponse.ServingStatus; tests/test_server.py checks the values
SERVING = 1
NOT_SERVING = 2
SERVICE_UNKNOWN = 3

_WATCH_POLL = 0.5  # how often a Watch notices that its caller went away


class HealthServicer:
    _trailer: tuple[tuple[str, str], ...] | None = None

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._status: dict[str, Status] = {"": SERVING, SERVICE_NAME: SERVING}
        self._closed = False

    def announce_broker_queues(self) -> None:
        """serve(): this plugin queues broker messages until the host opens the broker stream.

        Each Check's trailing metadata then tells the host, which may open the stream lazily.
        """
        self._trailer = (BROKER_QUEUES_METADATA,)

    def set_status(self, service: str, status: Status) -> None:
        with self._cond:
            self._status[service] = status
            self._cond.notify_all()

    def close(self) -> None:
        """Mark everything NOT_SERVING and end every Watch stream."""
        with self._cond:
            for name in self._status:
                self._status[name] = NOT_SERVING
            self._closed = True
            self._cond.notify_all()

    def wake(self) -> None:
        """Wake the Watch streams now (one of them ended: it leaves its wait at once)."""
        with self._cond:
            self._cond.notify_all()

    def Check(self, request: HealthCheckRequest, context: grpc.ServicerContext) -> HealthCheckResponse:
        with self._cond:
            status = self._status.get(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
            raise AssertionError("abort() raises")
        if self._trailer is not None:
            context.set_trailing_metadata(self._trailer)
        return _response(status)

    def Watch(self, request: HealthCheckRequest,
              context: grpc.ServicerContext) -> Iterator[HealthCheckResponse]:
        last: Status | None = None
        while context.is_active():
            with self._cond:
                status = self._status.get(request.service, SERVICE_UNKNOWN)
                closed = self._closed
                if status == last and not closed:
                    self._cond.wait(_WATCH_POLL)
                    continue
            if status != last:
                last = status
                yield _response(status)
            if closed:
                return


def add_to_server(servicer: HealthServicer, server: grpc.Server, watches: int | None = None) -> None:
    """What the generated ``add_HealthServicer_to_server`` does, its message classes loaded at first use.

    ``watches``: at most that many Watch streams at once on this server. Each holds one of the
    server's threads for as long as it is open, and those threads are the ones that must answer
    Check and Shutdown; a Watch past the cap is refused with RESOURCE_EXHAUSTED.
    """
    watch = servicer.Watch if watches is None else _capped(servicer, watches)
    handlers = {
        "Check": grpc.unary_unary_rpc_method_handler(servicer.Check, request_deserializer=_request,
                                                     response_serializer=_serialize),
        "Watch": grpc.unary_stream_rpc_method_handler(watch, request_deserializer=_request,
                                                      response_serializer=_serialize),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


def _capped(servicer: HealthServicer, limit: int
            ) -> Callable[[HealthCheckRequest, grpc.ServicerContext], Iterator[HealthCheckResponse]]:
    slots = threading.BoundedSemaphore(limit)

    def capped(request: HealthCheckRequest, context: grpc.ServicerContext) -> Iterator[HealthCheckResponse]:
        if not slots.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"this plugin already serves {limit} health Watch streams; close one, or poll"
                          " with Check")
        freed = threading.Lock()

        def free() -> None:  # once, as soon as the call ends (a watcher reopening at once finds its place)
            if freed.acquire(blocking=False):
                slots.release()
                servicer.wake()  # the stream's wait ends now, not at its next poll

        context.add_callback(free)
        try:
            yield from servicer.Watch(request, context)
        finally:
            free()

    return capped


def _request(data: bytes) -> HealthCheckRequest:
    from plugbay._proto.grpc.health.v1 import health_pb2

    request: HealthCheckRequest = health_pb2.HealthCheckRequest.FromString(data)
    return request


def _response(status: Status) -> HealthCheckResponse:
    from plugbay._proto.grpc.health.v1 import health_pb2

    return health_pb2.HealthCheckResponse(status=status)  # type: ignore[arg-type]  # the enum's int


def _serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())
