"""A GeneratorExit a sync handler raises itself fails its call with UNKNOWN, in a server stream too.

plugbay answered every other BaseException (grpcio leaves them unanswered) but let GeneratorExit through as
the close of its own wrapper generator, so such a call was never answered: the host waited for its deadline,
or forever without one. The close of the wrapper itself (its collection) still answers nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugbay import Client, ClientConfig

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "streaming"))

from streaming_plugin_def import HANDSHAKE, PLUGIN_NAME, StreamerPlugin  # noqa: E402
from streamingproto import streaming_pb2  # noqa: E402

PROGRAM = """
import sys
sys.path[:0] = [{streaming!r}, {src!r}]
from streaming_plugin_def import HANDSHAKE, PLUGIN_NAME, StreamerPlugin
from streamingproto import streaming_pb2, streaming_pb2_grpc
from plugbay import ServeConfig, serve


class Closing(streaming_pb2_grpc.StreamerServicer):
    def Generate(self, request, context):
        yield streaming_pb2.Chunk(seq=1)
        raise GeneratorExit("a helper generator was closed")

    def GetStats(self, request, context):
        raise GeneratorExit("a helper generator was closed")

    def Echo(self, request_iterator, context):  # a plain function: raises when called, no generator made
        raise GeneratorExit("a helper generator was closed")


serve(ServeConfig(handshake=HANDSHAKE, plugins={{PLUGIN_NAME: StreamerPlugin(Closing())}}))
"""


@pytest.fixture
def streamer(tmp_path: Path) -> Iterator[Any]:
    program = tmp_path / "closing.py"
    program.write_text(PROGRAM.format(streaming=str(REPO / "examples" / "streaming"), src=str(REPO / "src")))
    host = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: StreamerPlugin()},
                               cmd=[sys.executable, str(program)], start_timeout=20))
    try:
        yield host.dispense(PLUGIN_NAME)
    finally:
        host.kill()


def test_a_handlers_own_generator_exit_fails_a_server_stream(streamer: Any) -> None:
    got: list[int] = []
    with pytest.raises(grpc.RpcError) as failed:
        for chunk in streamer.stub.Generate(streaming_pb2.GenerateRequest(count=1, size=1), timeout=20):
            got.append(chunk.seq)
    assert got == [1]
    assert failed.value.code() is grpc.StatusCode.UNKNOWN  # answered, not the 20 s deadline
    assert failed.value.details() == "the handler raised GeneratorExit('a helper generator was closed')"


def test_a_plain_streaming_handlers_own_generator_exit_fails_its_call(streamer: Any) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        list(streamer.stub.Echo(iter([streaming_pb2.Chunk(seq=1)]), timeout=20))
    assert failed.value.code() is grpc.StatusCode.UNKNOWN  # answered, not the 20 s deadline
    assert failed.value.details() == "the handler raised GeneratorExit('a helper generator was closed')"


def test_a_handlers_own_generator_exit_fails_a_unary_call(streamer: Any) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        streamer.stub.GetStats(streaming_pb2.StatsRequest(), timeout=20)
    assert failed.value.code() is grpc.StatusCode.UNKNOWN
    assert failed.value.details() == "the handler raised GeneratorExit('a helper generator was closed')"


def test_closing_the_wrapper_closes_the_handlers_generator_and_answers_nothing() -> None:
    from plugbay.core.transport.handlerfail import responses

    ran: list[str] = []

    def handler() -> Iterator[int]:
        try:
            yield 1
            yield 2
        finally:
            ran.append("handler's finally")

    class NoAbort:
        def abort(self, code: Any, details: str) -> None:
            ran.append(f"abort {details}")

    answers = handler()  # held here: its collection cannot close it, only the wrapper's close()
    wrapper = responses(answers, NoAbort())  # type: ignore[arg-type]
    assert next(wrapper) == 1
    wrapper.close()  # what a generator's collection does, as grpcio leaves a cancelled stream's iterator
    assert ran == ["handler's finally"]  # closed by then, nothing aborted
    assert answers.gi_frame is None
