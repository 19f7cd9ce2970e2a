"""A brokered server's faults: a handler raising SystemExit, KeyboardInterrupt or GeneratorExit answers
UNKNOWN; a service registered twice on one is refused, and reflection registered twice answers for both (as
on the plugin's server).

The plugin's own handlers answered them (grpcio leaves any non-Exception unanswered), but a brokered server
has no gate: a host's AddHelper callback that called sys.exit() left the counter plugin's nested Sum call
waiting for its 30 s deadline, and the host's Put failed as a call timeout that blamed the plugin (a Go
plugin's nested call, with no deadline, would have waited for ever).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugbay import Client, ClientConfig

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "counter"))
sys.path.insert(0, str(REPO / "examples" / "streaming"))

from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin  # noqa: E402


class Raising:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def sum(self, a: int, b: int) -> int:
        raise self.exc


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    """A Client of the counter example plugin, killed after the test."""
    monkeypatch.chdir(tmp_path)  # the counter plugin keeps its values in files there
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                                 cmd=[sys.executable, str(REPO / "examples" / "counter" / "plugin.py")],
                                 start_timeout=60, call_timeout=20))
    try:
        yield client
    finally:
        client.kill()


@pytest.mark.parametrize("exc", [SystemExit(4), KeyboardInterrupt(), GeneratorExit("closed")], ids=repr)
def test_a_callback_raising_a_base_exception_answers_the_plugins_nested_call(
        host: Client, caplog: pytest.LogCaptureFixture, exc: BaseException) -> None:
    counter = host.dispense(PLUGIN_NAME)
    with pytest.raises(grpc.RpcError) as failed:
        counter.put("k", 1, Raising(exc))
    # the plugin passes its nested call's status through (as a Go plugin does): the callback's answer
    assert failed.value.code() is grpc.StatusCode.UNKNOWN, failed.value
    assert failed.value.details() == f"the handler raised {exc!r}"
    counter.put("k", 2, _Adder())  # the broker serves on
    assert counter.get("k") == 2
    # the host's callback failed on the host's brokered server: its record is the broker's, not "plugbay.server"
    failures = [r.name for r in caplog.records if r.getMessage().startswith(f"a handler raised {exc!r}")]
    assert failures == ["plugbay.broker"]


class _Adder:
    def sum(self, a: int, b: int) -> int:
        return a + b


def test_a_service_registered_twice_on_a_brokered_server_is_refused(host: Client) -> None:
    # grpcio answers a twice-added generic service with the first servicer, silently: a callback that
    # meant to replace one (or two helpers of one service) got the other's answers
    from counterproto import counter_pb2_grpc

    from counter_plugin_def import _helper_servicer
    from plugbay import BrokerError

    counter = host.dispense(PLUGIN_NAME)
    broker = counter._broker

    def twice(server: grpc.Server) -> None:
        counter_pb2_grpc.add_AddHelperServicer_to_server(_helper_servicer(_Adder()), server)
        counter_pb2_grpc.add_AddHelperServicer_to_server(_helper_servicer(Raising(SystemExit(1))), server)

    with pytest.raises(BrokerError, match="'proto.AddHelper' is registered twice on a brokered server"):
        broker.accept_and_serve(broker.next_id(), twice)
    counter.put("k", 3, _Adder())  # the broker serves on
    assert counter.get("k") == 3


def test_a_refused_batch_on_a_brokered_server_leaves_none_of_its_names_taken() -> None:
    from concurrent import futures

    from plugbay import BrokerError
    from plugbay.core.broker.registrar import Registrar

    def service(name: str) -> Any:
        return grpc.method_handlers_generic_handler(name, {"M": grpc.unary_unary_rpc_method_handler(lambda r, c: b"")})

    with futures.ThreadPoolExecutor(2) as pool:
        server = grpc.server(pool)
        registrar = Registrar(server, lambda: None)  # sync handlers only: no loop asked for
        registrar.add_generic_rpc_handlers((service("s.Taken"),))
        with pytest.raises(BrokerError, match="'s.Taken' is registered twice"):
            registrar.add_generic_rpc_handlers((service("s.Free"), service("s.Taken")))
        registrar.add_generic_rpc_handlers((service("s.Free"),))  # never added: still free
        server.stop(None)


def test_a_service_registered_twice_as_registered_methods_is_refused_too() -> None:
    """Generated code adds a service generically, then as registered methods (one add_*Servicer_to_server
    call); a second registration by the second way alone was kept silent (the first answered)."""
    from concurrent import futures

    from plugbay import BrokerError
    from plugbay.core.broker.registrar import Registrar

    table = {"M": grpc.unary_unary_rpc_method_handler(lambda r, c: b"")}
    with futures.ThreadPoolExecutor(2) as pool:
        server = grpc.server(pool)
        registrar = Registrar(server, lambda: None)  # sync handlers only: no loop asked for
        registrar.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("s.Both", table),))
        registrar.add_registered_method_handlers("s.Both", table)  # the same call's second half: taken
        registrar.add_registered_method_handlers("s.Alone", table)
        with pytest.raises(BrokerError, match="'s.Alone' is registered twice"):
            registrar.add_registered_method_handlers("s.Alone", table)
        server.stop(None)


def test_reflection_registered_twice_on_a_brokered_server_answers_for_both() -> None:
    """As on the plugin's server (both keep one ServiceNames): one reflection service per server is all gRPC
    serves, so it answers for every registration: their services listed, each one's files found in its own
    descriptor pool (the second registration was dropped, its services neither listed nor described)."""
    from concurrent import futures

    from counterproto import counter_pb2
    from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
    from streamingproto import streaming_pb2

    from plugbay.core.broker.registrar import Registrar

    with futures.ThreadPoolExecutor(2) as pool:
        server = grpc.server(pool)
        try:
            registrar = Registrar(server, lambda: None)  # sync handlers only: no loop asked for
            reflection.enable_server_reflection(["proto.AddHelper", reflection.SERVICE_NAME], registrar,
                                                pool=counter_pb2.DESCRIPTOR.pool)
            reflection.enable_server_reflection(["streaming.Streamer", reflection.SERVICE_NAME], registrar,
                                                pool=streaming_pb2.DESCRIPTOR.pool)
            port = server.add_insecure_port("127.0.0.1:0")
            server.start()
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = reflection_pb2_grpc.ServerReflectionStub(channel)
                asked = [reflection_pb2.ServerReflectionRequest(list_services=""),
                         *(reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
                           for symbol in ("proto.AddHelper", "streaming.Streamer", "no.Such"))]
                answers = list(stub.ServerReflectionInfo(iter(asked), timeout=20))
        finally:
            server.stop(None)
    assert [service.name for service in answers[0].list_services_response.service] == sorted([
        "proto.AddHelper", reflection.SERVICE_NAME, "streaming.Streamer"])  # sorted, as one registration lists
    helper, streamer, missing = answers[1:]
    assert helper.WhichOneof("message_response") == "file_descriptor_response", helper
    assert streamer.WhichOneof("message_response") == "file_descriptor_response", streamer
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_a_brokered_server_registering_reflection_twice_is_not_refused(host: Client) -> None:
    """End to end through a real broker: a register callback that turns reflection on twice (as two helpers
    that each opt into it) is accepted, and the broker serves on. What reflection answers is the test above."""
    from counterproto import counter_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    from counter_plugin_def import _helper_servicer

    counter = host.dispense(PLUGIN_NAME)
    broker = counter._broker

    def reflecting_twice(server: grpc.Server) -> None:  # as two helpers that each opt into reflection
        counter_pb2_grpc.add_AddHelperServicer_to_server(_helper_servicer(_Adder()), server)
        reflection.enable_server_reflection(["proto.AddHelper", reflection.SERVICE_NAME], server)
        reflection.enable_server_reflection([reflection.SERVICE_NAME], server)

    broker.accept_and_serve(broker.next_id(), reflecting_twice)  # not a BrokerError naming reflection
    counter.put("k", 3, _Adder())  # the broker serves on
    assert counter.get("k") == 3


class _ClosingStreamer:
    """A brokered Streamer whose handlers raise ``exc`` themselves: Generate after its first chunk (a
    generator), Echo when called (a plain function: no generator made)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def Generate(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        from streamingproto import streaming_pb2

        yield streaming_pb2.Chunk(seq=1)
        raise self.exc

    def Echo(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        raise self.exc

    def GetStats(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        raise self.exc


@pytest.mark.parametrize("multiplexed", [False, True], ids=["sockets", "multiplexed"])
@pytest.mark.parametrize("exc", [SystemExit(4), KeyboardInterrupt(), GeneratorExit("closed")], ids=repr)
def test_a_brokered_streaming_handler_raising_a_base_exception_answers_unknown(
        caplog: pytest.LogCaptureFixture, exc: BaseException, multiplexed: bool) -> None:
    """The unary case above, in a server stream and a bidirectional one: a GeneratorExit there looked like
    the close of the broker's own wrapper generator, and grpcio answers no other BaseException: the
    dialling side waited for its deadline."""
    if str(REPO / "examples" / "streaming") not in sys.path:  # once for every parametrized case
        sys.path.insert(0, str(REPO / "examples" / "streaming"))
    from streamingproto import streaming_pb2, streaming_pb2_grpc

    from tests.test_broker import _close_pair, _make_pair
    from tests.test_broker_mux import close_mux_pair, make_mux_pair
    from plugbay.core.broker.brokertransport import BrokerTransport

    if multiplexed:
        pair: Any = make_mux_pair("unix")
        close = close_mux_pair
    else:
        folder = tempfile.mkdtemp(prefix="bkf", dir="/tmp")  # short: unix socket paths stay under 108 bytes
        pair = _make_pair(folder, BrokerTransport(socket_dir=folder), BrokerTransport(socket_dir=folder))

        def close(p: Any) -> None:
            _close_pair(p)
            shutil.rmtree(folder, ignore_errors=True)
    try:
        sid = pair.plugin.next_id()
        pair.plugin.accept_and_serve(
            sid, lambda s: streaming_pb2_grpc.add_StreamerServicer_to_server(_ClosingStreamer(exc), s))
        stub = streaming_pb2_grpc.StreamerStub(pair.host.dial(sid))
        got: list[int] = []
        with pytest.raises(grpc.RpcError) as failed:
            for chunk in stub.Generate(streaming_pb2.GenerateRequest(count=2, size=1), timeout=20):
                got.append(chunk.seq)
        assert got == [1]
        assert failed.value.code() is grpc.StatusCode.UNKNOWN, failed.value  # answered, not the deadline
        assert failed.value.details() == f"the handler raised {exc!r}"
        with pytest.raises(grpc.RpcError) as failed:
            list(stub.Echo(iter([streaming_pb2.Chunk(seq=1)]), timeout=20))
        assert failed.value.code() is grpc.StatusCode.UNKNOWN, failed.value
        assert failed.value.details() == f"the handler raised {exc!r}"
        # the broker serves on: a brokered server's pool thread was not lost to the exception
        with pytest.raises(grpc.RpcError) as failed:
            stub.GetStats(streaming_pb2.StatsRequest(), timeout=20)
        assert failed.value.code() is grpc.StatusCode.UNKNOWN, failed.value
    finally:
        close(pair)
    failures = [r.name for r in caplog.records if r.getMessage().startswith(f"a handler raised {exc!r}")]
    assert failures == ["plugbay.broker"] * 3
