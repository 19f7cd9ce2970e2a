"""grpc.health.v1.Health for the plugin side.

go-plugin's host pings the plugin with Check(service="plugin"); a Go host
fails its Ping() without it. Watch streams the status and ends when the
server shuts down, so a graceful stop never waits on a watcher.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc

from plugbay.core.protocol.handshake import BROKER_QUEUES_METADATA
from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc

SERVICE_NAME = "plugin"  # go-plugin's GRPCServiceName

Status = health_pb2.HealthCheckResponse.ServingStatus

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

_WATCH_POLL = 0.5  # how often a Watch notices that its caller went away


class HealthServicer(health_pb2_grpc.HealthServicer):
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

    def Check(self, request: health_pb2.HealthCheckRequest,
              context: grpc.ServicerContext) -> health_pb2.HealthCheckResponse:
        with self._cond:
            status = self._status.get(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
            raise AssertionError("abort() raises")
        if self._trailer is not None:
            context.set_trailing_metadata(self._trailer)
        return health_pb2.HealthCheckResponse(status=status)

    def Watch(self, request: health_pb2.HealthCheckRequest,
              context: grpc.ServicerContext) -> Iterator[health_pb2.HealthCheckResponse]:
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
                yield health_pb2.HealthCheckResponse(status=status)
            if closed:
                return


def add_to_server(servicer: HealthServicer, server: grpc.Server) -> None:
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
