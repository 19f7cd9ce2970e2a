"""Where ``info`` and ``call`` learn a plugin's services: server reflection, or ``--proto`` files.

``--proto FILE`` is compiled at run time with grpc_tools.protoc into a
descriptor set in a temporary folder that is removed right after; nothing is
generated into the working folder. Reflection (grpcio-reflection's client
database) works when the plugin registered the reflection service.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from plugbay.cli.connectcause import connect_failure
from plugbay.core.transport.handlenames import named_handles
from plugbay.core.transport.tempdirs import make_tempdir
from plugbay.errors import CallFailedError, ConfigError, TargetUnreachableError


@dataclass
class Services:
    pool: Any  # google.protobuf.descriptor_pool.DescriptorPool
    names: list[str]
    source: str  # "reflection" or "proto"


def from_protos(files: Sequence[str], include: Sequence[str] = ()) -> Services:
    try:
        from grpc_tools import protoc
    except ImportError:
        raise ConfigError("--proto needs grpcio-tools; install plugbay[cli]") from None
    from google.protobuf import descriptor_pb2, descriptor_pool

    tmp = make_tempdir("plugbay-proto-")
    try:
        out = os.path.join(tmp, "set.pb")
        args = ["protoc", f"--descriptor_set_out={out}", "--include_imports",
                f"-I{os.path.join(os.path.dirname(protoc.__file__), '_proto')}"]
        for path in files:
            if not os.path.isfile(path):
                raise ConfigError(f"--proto {path}: no such file; pass the .proto that defines the service")
        args += [f"-I{d}" for d in (*include, *sorted({os.path.dirname(os.path.abspath(f)) for f in files}))]
        args += [os.path.abspath(f) for f in files]
        if protoc.main(args) != 0:
            raise ConfigError(f"protoc could not compile {', '.join(files)} (its message is above); fix the"
                              " file or add its import folders with --proto-path")
        fds = descriptor_pb2.FileDescriptorSet.FromString(open(out, "rb").read())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    pool = descriptor_pool.DescriptorPool()
    names: list[str] = []
    for fd in fds.file:
        pool.Add(fd)
    for fd in fds.file:
        if any(os.path.abspath(f).endswith(fd.name) for f in files):
            names += [f"{fd.package}.{s.name}" if fd.package else s.name for s in fd.service]
    return Services(pool, sorted(names), "proto")


def from_reflection(channel: grpc.Channel, timeout: float,
                    early: Callable[[grpc.Future], None] | None = None) -> Services | None:
    """The plugin's services via server reflection; None when it does not offer reflection. ``early``: called
    with the wait for the connection, to raise a failure known before it ends (a definite TLS failure)."""
    try:
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
            ProtoReflectionDescriptorDatabase,
        )
    except ImportError:
        return None
    from google.protobuf import descriptor_pool

    ready, started = grpc.channel_ready_future(channel), time.monotonic()
    try:
        if early is not None:
            early(ready)
        ready.result(timeout=max(timeout - (time.monotonic() - started), 0))
    except grpc.FutureTimeoutError:
        ready.cancel()  # else it stays subscribed to the channel's state: the close (_close_polled) waits 1 s
        raise TargetUnreachableError(f"the plugin did not accept a connection within {timeout:g}s"
                                     f"{connect_failure(channel)}; check that it still runs (plugbay health)"
                                     " and the target address") from None
    db = ProtoReflectionDescriptorDatabase(channel)
    # its streams carry no deadline: a plugin whose reflection stalls (health SERVING) hung the command
    db._stub = _Within(db._stub, time.monotonic() + timeout, timeout)
    try:
        names = list(db.get_services())
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            return None
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            raise TargetUnreachableError(f"the plugin is not reachable ({named_handles(str(exc.details()))})") from None
        raise CallFailedError(f"server reflection failed: {exc.code().name}: {exc.details()}") from None
    return Services(descriptor_pool.DescriptorPool(db), sorted(names), "reflection")


class _Within:
    """The reflection database's stub, each of its streams bounded by what is left of ``--timeout``."""

    def __init__(self, stub: Any, deadline: float, timeout: float) -> None:
        self._stub, self._deadline, self._timeout = stub, deadline, timeout

    def _late(self) -> TargetUnreachableError:
        return TargetUnreachableError(f"the plugin did not answer server reflection within {self._timeout:g}s;"
                                      " check that it still runs (plugbay health), or pass --proto")

    def ServerReflectionInfo(self, requests: Any) -> Iterator[Any]:  # noqa: N802 - the stub's name
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise self._late()
        return _answers(self._stub.ServerReflectionInfo(requests, timeout=left), left, self._late)


# gRPC ends a stream at its deadline on the thread that reads the connection; a peer that keeps that thread
# busy (HTTP/2 CONTINUATION frames that never end a header block) kept the command for minutes. The stream is
# cancelled this long after its deadline, by a timer of its own.
_OVERRUN = 1.0


def _answers(responses: Any, left: float, late: Callable[[], TargetUnreachableError]) -> Iterator[Any]:
    overrun = threading.Timer(left + _OVERRUN, responses.cancel)
    overrun.daemon = True
    overrun.start()
    try:
        yield from responses
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED or overrun.finished.is_set():
            raise late() from None
        raise
    finally:
        overrun.cancel()


def describe(services: Services) -> list[dict[str, Any]]:
    """Each service with its methods (stable keys; see docs/cli.md)."""
    out: list[dict[str, Any]] = []
    for name in services.names:
        try:
            svc = services.pool.FindServiceByName(name)
        except KeyError:
            out.append({"service": name, "methods": [], "error": _unloadable(services)})
            continue
        out.append({"service": name, "methods": [
            {"name": m.name, "path": f"/{name}/{m.name}", "input": m.input_type.full_name,
             "output": m.output_type.full_name, "client_streaming": bool(m.client_streaming),
             "server_streaming": bool(m.server_streaming)} for m in svc.methods]})
    return out


def _unloadable(services: Services) -> str:
    # reflection clients key files by name: of two plugins' files of one name, only one loads (docs/cli.md)
    return (f"listed by {services.source} but its descriptor could not be loaded (two plugins' proto files share"
            " a file name?); give each plugin's proto file a path of its own, or pass its --proto")


def find_method(services: Services, path: str) -> Any:
    service, sep, method = path.strip("/").rpartition("/")
    if not sep or not service or not method or not path.startswith("/"):
        raise ConfigError(f"method {path!r} must be written /package.Service/Method (e.g. /proto.KV/Get)")
    try:
        svc = services.pool.FindServiceByName(service)
    except KeyError:
        if service in services.names:
            raise CallFailedError(f"service {service!r} is {_unloadable(services)}") from None
        known = ", ".join(services.names) or "none"
        raise CallFailedError(f"unknown service {service!r} (known from {services.source}: {known});"
                              " check the name or pass the right --proto") from None
    found = svc.methods_by_name.get(method)
    if found is None:
        raise CallFailedError(f"unknown method {method!r} of {service} (it has:"
                              f" {', '.join(m.name for m in svc.methods)}); check the method name")
    if found.client_streaming or found.server_streaming:
        raise ConfigError(f"{path} is a streaming method; plugbay call makes unary calls only")
    return found
