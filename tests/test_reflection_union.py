"""One reflection service answering for several plugins' registrations on one server
(core/transport/reflectionunion.py), asked over a real gRPC server through grpcio-reflection's servicer."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

from plugbay.core.plugin.gate import HandlerGate
from plugbay.core.plugin.gatedserver import GatedServer, plugin_service_names


def _file(name: str, package: str, *, service: str | None = None, deps: tuple[str, ...] = (),
          extends: tuple[str, int] | None = None, extendable: bool = False) -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto2", dependency=list(deps))
    if extendable:
        f.message_type.add(name="Base").extension_range.add(start=100, end=200)
    if service:
        f.message_type.add(name="Req")
        f.service.add(name=service).method.add(name="M", input_type=f".{package}.Req", output_type=f".{package}.Req")
    if extends:
        field = descriptor_pb2.FieldDescriptorProto
        f.extension.add(name=f"ext{extends[1]}", number=extends[1], label=field.LABEL_OPTIONAL, type=field.TYPE_INT32,
                        extendee=extends[0])
    return f


def _pool(*files: descriptor_pb2.FileDescriptorProto) -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for f in files:
        pool.Add(f)
    return pool


class _Yields:
    """A reflection servicer of its own: yields ``answers`` (none: a servicer that answers nothing) or raises."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def ServerReflectionInfo(self, requests: Any, context: Any) -> Iterator[Any]:  # noqa: N802 (gRPC's name)
        for _ in requests:
            if self.fail:
                raise RuntimeError("broken servicer")
            return
        yield from ()


@contextmanager
def _served(*registrations: Any) -> Iterator[Any]:
    """A server where each registration ((a pool, its service names), or a servicer) is a plugin of its own
    registering reflection; yields a function asking the server one reflection request."""
    from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

    with futures.ThreadPoolExecutor(4) as threads:
        server = grpc.server(threads)
        try:
            names = plugin_service_names()
            for at, one in enumerate(registrations):
                gated = GatedServer(server, HandlerGate(1), names=names, owner=f"plugin '{at}'")
                if isinstance(one, _Yields):
                    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(one, gated)
                else:
                    pool, services = one
                    reflection.enable_server_reflection([*services, reflection.SERVICE_NAME], gated, pool=pool)
            port = server.add_insecure_port("127.0.0.1:0")
            server.start()
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = reflection_pb2_grpc.ServerReflectionStub(channel)
                yield lambda request: list(stub.ServerReflectionInfo(iter([request]), timeout=10))[0]
        finally:
            server.stop(None)


def test_extension_numbers_of_a_type_are_those_of_every_plugins_pool() -> None:
    from grpc_reflection.v1alpha import reflection_pb2

    base = _file("base.proto", "base", extendable=True)
    a = _pool(base, _file("ext_a.proto", "a", service="Svc", deps=("base.proto",), extends=(".base.Base", 101)))
    b = _pool(base, _file("ext_b.proto", "b", service="Svc", deps=("base.proto",), extends=(".base.Base", 102)))
    with _served((a, ["a.Svc"]), (b, ["b.Svc"])) as ask:
        answer = ask(reflection_pb2.ServerReflectionRequest(all_extension_numbers_of_type="base.Base"))
    assert answer.WhichOneof("message_response") == "all_extension_numbers_response", answer
    assert sorted(answer.all_extension_numbers_response.extension_number) == [101, 102]


@pytest.mark.parametrize("fail", [False, True], ids=["answers-nothing", "raises"])
def test_a_failing_plugins_reflection_is_its_own_error_and_the_others_still_answer(
        fail: bool, caplog: pytest.LogCaptureFixture) -> None:
    from grpc_reflection.v1alpha import reflection_pb2

    broken = _Yields(fail)
    good = _pool(_file("good.proto", "good", service="Svc"))
    with caplog.at_level(logging.WARNING, "plugbay.server"), _served(broken, (good, ["good.Svc"])) as ask:
        for _ in range(2):
            listed = ask(reflection_pb2.ServerReflectionRequest(list_services=""))
            found = ask(reflection_pb2.ServerReflectionRequest(file_containing_symbol="good.Svc"))
    assert [s.name for s in listed.list_services_response.service] == [
        "good.Svc", "grpc.reflection.v1alpha.ServerReflection"], listed
    assert found.WhichOneof("message_response") == "file_descriptor_response", found
    said = [r.getMessage() for r in caplog.records if "server reflection of" in r.getMessage()]
    assert len(said) == 1 and "_Yields" in said[0], said  # once, naming the member
    assert ("RuntimeError: broken servicer" if fail else "answered nothing") in said[0]


def test_two_plugins_files_of_one_name_are_warned_of_naming_the_file(caplog: pytest.LogCaptureFixture) -> None:
    a = _pool(_file("plugin.proto", "a", service="Svc"))
    b = _pool(_file("plugin.proto", "b", service="Svc"))
    same = _pool(_file("plugin.proto", "a", service="Svc"))  # the same file in another pool: no clash
    with caplog.at_level(logging.WARNING, "plugbay.server"):
        with _served((a, ["a.Svc"]), (same, ["a.Svc"])):
            pass
        assert not [r for r in caplog.records if "plugin.proto" in r.getMessage()]
        with _served((a, ["a.Svc"]), (b, ["b.Svc"])):
            pass
    said = [r.getMessage() for r in caplog.records if "plugin.proto" in r.getMessage()]
    assert len(said) == 1 and "'plugin.proto'" in said[0] and "b.Svc" in said[0], said
    assert "key files by name" in said[0], said
