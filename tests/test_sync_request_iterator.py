"""A sync stream whose request iterator raises: the caller gets that error, not grpcio's UNKNOWN.

grpcio reads a stream's requests on a thread of its own; an error there fails the call with its own
UNKNOWN "Exception iterating requests!" (logged, the error itself lost), which the caller saw as an
RpcError that names nothing of its own code. A Client's, a Supervisor's (its channel over its Client's)
and a RemoteClient's (over its endpoint pool) stream-stream and stream-unary calls raise the iterator's
error instead, with its own __cause__ and __context__ (or, having none, the call's failure as its
context). Real streaming plugin (examples/streaming): Echo, also called as a stream-unary method (the
plugin waits for more requests, so the call ends only by the iterator's error).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))  # the brokered tests' kv plugin (imported where used)
sys.path.insert(0, str(REPO / "examples" / "streaming"))

from streaming_plugin_def import HANDSHAKE, PLUGIN_NAME, StreamerPlugin  # noqa: E402
from streamingproto import streaming_pb2  # noqa: E402

from plugbay import Client, ClientConfig, RemoteClient, Supervisor  # noqa: E402
from plugbay.core.protocol.handlerstatus import HANDLER_STATUS  # noqa: E402
from tests.broken_source import SourceBroke, broke  # noqa: E402
from tests.test_network_dead_replica import certs, streamers  # noqa: E402,F401 (fixtures)


GUARD = 60.0


def requests(plain: bool) -> Iterator[streaming_pb2.Chunk]:
    yield streaming_pb2.Chunk(seq=0, data=b"first")
    if plain:
        raise SourceBroke("the file being streamed could not be read")  # no context of its own
    raise broke()


def config() -> ClientConfig:
    return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: StreamerPlugin()}, call_timeout=30,
                        cmd=[sys.executable, str(REPO / "examples" / "streaming" / "plugin.py")])


def calls(channel: grpc.Channel) -> dict[str, Callable[[Iterator[Any]], Any]]:
    echo, upload = echo_method(channel), upload_method(channel)
    return {
        "stream_stream": lambda source: list(echo(source)),
        "stream_unary": lambda source: upload(source),
        "with_call": lambda source: upload.with_call(source),
        "future": lambda source: upload.future(source).result(),
        "future exception": lambda source: _exception(upload.future(source)),
    }


def _exception(future: Any) -> BaseException:
    """What exception() gives (raised by the caller, not here: this frame holds the future, which holds it)."""
    first = future.exception()
    return first if first is future.exception() else AssertionError("a future gave two different errors")


def outcome(call: Callable[[Iterator[Any]], Any], source: Iterator[Any]) -> BaseException | None:
    """What the call raised (or, a future's exception(), returned). Never raised again: a frame holding it
    that it is raised through would hold it in a cycle with its traceback."""
    try:
        returned = call(source)
    except BaseException as exc:  # noqa: B036
        return exc
    return returned if isinstance(returned, BaseException) else None


def what_each_call_raised(owner: AbstractContextManager[Any]) -> dict[str, str]:
    said: dict[str, str] = {}
    with owner as client:
        streamer = client.dispense(PLUGIN_NAME)
        for how, call in calls(client.channel).items():
            for plain in (False, True):
                said[f"{how}{', plain' if plain else ''}"] = described(outcome(call, requests(plain)))
        said["after"] = type(streamer.stats()).__name__  # the client still serves calls
    return said


def described(exc: BaseException | None) -> str:
    """What was raised, what from and during what (the error itself kept nowhere once this returns)."""
    context: Any = None if exc is None else exc.__context__
    if isinstance(context, grpc.RpcError):  # its repr is many lines: what it says
        context = f"RpcError {context.code().name} {context.details()!r}"
    else:
        context = repr(context)
    return f"{type(exc).__name__}: {exc}; cause {None if exc is None else exc.__cause__!r}; context {context}"


OWN = ("SourceBroke: the file being streamed could not be read; cause OSError(5, 'Input/output error');"
       " context OSError(5, 'Input/output error')")
# grpcio's details for the call its request iterator failed: which one depends on a race in grpcio (the
# library accepts both: plugbay.core.transport.requestsource)
DETAILS = ("Exception iterating requests!", "Stream removed (Exception iterating requests!)")
PLAIN = tuple(f"SourceBroke: the file being streamed could not be read; cause None; context RpcError UNKNOWN {d!r}"
              for d in DETAILS)


def unheld(collect: Callable[[], dict[str, str]]) -> dict[str, str]:
    """What collect() said each call raised, checked: every style raised the iterator's own error, plain or
    chained, and once collect() returned nothing holds one (gc off: what a collection would free is what this
    looks for; an error's traceback holds the frames it was raised through, so one holding the error, or what
    holds it, would make a cycle)."""
    # grpcio logs the error it met (exc_info), and pytest keeps log records: not the holder looked for here
    logged = logging.getLogger("grpc._channel")
    was, logged.disabled = logged.disabled, True
    gc.collect()  # what earlier tests left for a collection is not this one's
    gc.disable()
    try:
        before = set(threading.enumerate())
        said = collect()
        # the threads started during the calls (grpcio's that read the requests among them: each holds the
        # error it met until it leaves its except block, just after the call's end; the owner's, ended with it)
        for thread in set(threading.enumerate()) - before:
            thread.join(GUARD)  # bounded: one still holding the error then fails the check below
        held = [o for o in gc.get_objects() if isinstance(o, SourceBroke)]
    finally:
        gc.enable()
        logged.disabled = was
    assert not held, held
    for how in ("stream_stream", "stream_unary", "with_call", "future", "future exception"):
        assert said[how] == OWN, (how, said)
        assert said[f"{how}, plain"] in PLAIN, (how, said)
    return said


def check(owner: AbstractContextManager[Any]) -> None:
    said = unheld(lambda: what_each_call_raised(owner))
    assert said["after"] == "Stats", said


@pytest.mark.parametrize("kind", [Client, Supervisor])
def test_a_request_iterator_that_raises_fails_the_call_with_its_own_error(kind: Any) -> None:
    owner = kind(config()) if kind is Client else kind(config(), health_interval=None)
    check(owner)


@pytest.mark.parametrize("kind", [Client, Supervisor])
def test_a_futures_done_callback_and_traceback_give_the_callers_error(kind: Any) -> None:
    # a stream-unary future's done callback got grpcio's own call, whose result() raised grpcio's UNKNOWN
    # "Exception iterating requests!" while the caller's raised the iterator's error, and its traceback()
    # was grpcio's, not the error's; a Client's unary future's done callback got grpcio's call too (its
    # errors untranslated). The callback must get the future the caller holds, as a brokered future's does
    check_future(kind(config()) if kind is Client else kind(config(), health_interval=None))


def test_the_same_for_a_remote_clients_future(streamers: list[Any], certs: Any) -> None:
    from tests.test_network_dead_replica import _first_config

    check_future(RemoteClient(_first_config(streamers, certs)))


def check_future(owner: AbstractContextManager[Any]) -> None:
    given: queue.Queue[Any] = queue.Queue()
    logged = logging.getLogger("grpc._channel")  # grpcio logs the error it met (exc_info)
    was, logged.disabled = logged.disabled, True
    try:
        with owner as client:
            client.dispense(PLUGIN_NAME)
            future = upload_method(client.channel).future(requests(True))
            future.add_done_callback(given.put)
            got = given.get(timeout=GUARD)
            same = got is future
            said = described(outcome(lambda _: got.result(), iter(())))
            innermost = future.traceback(GUARD)
            while innermost is not None and innermost.tb_next is not None:
                innermost = innermost.tb_next
            raised_in = None if innermost is None else innermost.tb_frame.f_code.co_name
            del innermost
            stats = client.channel.unary_unary("/streaming.Streamer/GetStats",
                                               request_serializer=streaming_pb2.StatsRequest.SerializeToString,
                                               response_deserializer=streaming_pb2.Stats.FromString)
            unary = stats.future(streaming_pb2.StatsRequest())
            unary.add_done_callback(given.put)
            unary_same = given.get(timeout=GUARD) is unary
            unary_result = type(unary.result(GUARD)).__name__
    finally:
        logged.disabled = was
    assert same, "the stream-unary future's done callback got another object than the future"
    assert said in PLAIN, said
    assert raised_in == "requests", f"the future's traceback() ends in {raised_in!r}, not the request iterator"
    assert unary_same, "the unary future's done callback got another object than the future"
    assert unary_result == "Stats", unary_result


def test_the_same_through_a_remote_clients_pool(streamers: list[Any], certs: Any) -> None:
    from tests.test_network_dead_replica import _first_config

    check(RemoteClient(_first_config(streamers, certs)))


def test_threads_reading_one_failed_future_all_get_the_callers_own_error() -> None:
    # grpcio's futures may be read on several threads: each must get the iterator's error, the same one (it
    # got grpcio's UNKNOWN, an InvalidStateError or an AttributeError when two took it at once)
    readers, trials = 6, 1000
    logged = logging.getLogger("grpc._channel")  # grpcio logs each iterator's error
    was, logged.disabled = logged.disabled, True
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often: the reads overlap
    try:
        with Client(config()) as client:
            client.dispense(PLUGIN_NAME)
            upload = upload_method(client.channel)
            for trial in range(trials):
                same, kinds = read_together(upload.future(requests(True)), readers)
                assert same and kinds == ["SourceBroke: the file being streamed could not be read"] * readers, (
                    trial, kinds)
    finally:
        sys.setswitchinterval(switch)
        logged.disabled = was


def read_together(future: Any, readers: int) -> tuple[bool, list[str]]:
    """Whether ``readers`` threads reading the ended ``future`` at once all got the same error, and what each got."""
    ended = threading.Event()
    future.add_done_callback(lambda _: ended.set())
    assert ended.wait(GUARD), "the call never ended"
    together = threading.Barrier(readers)
    got: list[BaseException | None] = [None] * readers

    def read(i: int) -> None:
        together.wait(GUARD)
        got[i] = outcome(lambda _: future.result(), iter(()))

    threads = [threading.Thread(target=read, args=(i,)) for i in range(readers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(GUARD)
    return all(e is got[0] for e in got), sorted(f"{type(e).__name__}: {e}" for e in got)


def test_a_later_read_of_the_stream_names_the_error_an_earlier_read_raised() -> None:
    with Client(config()) as client:
        client.dispense(PLUGIN_NAME)
        echo = echo_method(client.channel)
        stream = echo(requests(True))
        with pytest.raises(SourceBroke):
            for _ in stream:
                pass
        with pytest.raises(asyncio.InvalidStateError) as later:  # not grpcio's UNKNOWN again
            next(stream)
        assert str(later.value) == ("the call ended when its request iterator raised SourceBroke: the file being"
                                    " streamed could not be read (an earlier read raised it)"), later.value


def test_a_forwarded_request_stream_whose_caller_cancelled_leaves_the_call_its_own_error() -> None:
    # a host's own grpcio server passes its incoming request stream on to the plugin; its caller cancels, so
    # grpcio's server iterator raises a bare grpc.RpcError (no code()): an upstream call's failure, not this
    # call's, which keeps its own error (grpcio's UNKNOWN, translated), the iterator's error its __cause__
    from concurrent import futures

    first, release = threading.Event(), threading.Event()
    seen: queue.Queue[str] = queue.Queue()
    chunk = dict(request_deserializer=streaming_pb2.Chunk.FromString,
                 response_serializer=streaming_pb2.Chunk.SerializeToString)
    with Client(config()) as client:
        client.dispense(PLUGIN_NAME)
        upload = upload_method(client.channel)

        def forward(incoming: Iterator[Any], context: grpc.ServicerContext) -> Any:
            def passed() -> Iterator[Any]:
                for request in incoming:
                    first.set()
                    yield request
            try:
                return upload(passed())
            except BaseException as exc:  # noqa: B036
                causes, cause = [], exc.__cause__
                while cause is not None:  # a bare grpc.RpcError is the one grpcio's server iterator raised
                    causes.append("bare RpcError" if type(cause) is grpc.RpcError else type(cause).__name__)
                    cause = cause.__cause__
                code, details = getattr(exc, "code", None), getattr(exc, "details", None)
                said = f"{code().name} {details()!r}" if callable(code) and callable(details) else "no code()"
                seen.put(f"{said}; causes {causes}")
                raise

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "fwd.Forwarder", {"Upload": grpc.stream_unary_rpc_method_handler(forward, **chunk)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()

        def callers_requests() -> Iterator[Any]:
            yield streaming_pb2.Chunk(seq=0, data=b"first")
            release.wait(GUARD)

        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.stream_unary("/fwd.Forwarder/Upload",
                                            request_serializer=streaming_pb2.Chunk.SerializeToString,
                                            response_deserializer=streaming_pb2.Chunk.FromString)
                caller = call.future(callers_requests())
                assert first.wait(GUARD), "the request never reached the forwarding server"
                caller.cancel()
                said = seen.get(timeout=GUARD)
        finally:
            release.set()
            server.stop(None).wait(GUARD)
    # grpcio's own error for its local cancel: either of its wordings (requestsource.py)
    assert said in [f"UNKNOWN {d!r}; causes ['bare RpcError']" for d in DETAILS], said


def test_a_plugins_own_answer_with_grpcios_details_stays_the_plugins_answer() -> None:
    # the plugin answered UNKNOWN "Exception iterating requests!" (passed on from a call of its own, marked
    # so) before this call's iterator raised: that answer is the call's error, not the iterator's
    ended = threading.Event()

    def source() -> Iterator[Any]:
        yield streaming_pb2.Chunk(seq=0, data=b"first")
        ended.wait(GUARD)  # the plugin answered first
        raise SourceBroke("the file being streamed could not be read")

    met = threading.Event()

    class Met(logging.Handler):  # grpcio logs the iterator's error once its thread met it (after plugbay kept it)
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "Exception iterating requests!":
                met.set()

    cmd = [sys.executable, str(REPO / "tests" / "plugins" / "iterating_answer.py")]
    logged, seen = logging.getLogger("grpc._channel"), Met()
    was, logged.propagate = logged.propagate, False
    logged.addHandler(seen)
    try:
        with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: StreamerPlugin()}, call_timeout=30,
                                 cmd=cmd)) as client:
            client.dispense(PLUGIN_NAME)
            upload = upload_method(client.channel)
            future = upload.future(source())
            future.add_done_callback(lambda _: ended.set())
            assert met.wait(GUARD), "the request iterator never raised"
            error = outcome(lambda _: future.result(), iter(()))
            said = (f"{error.code().name} {error.details()!r}" if isinstance(error, grpc.RpcError)
                    else described(error))
            marked = isinstance(error, grpc.RpcError) and (HANDLER_STATUS, "1") in tuple(error.trailing_metadata())
            del error
    finally:
        logged.removeHandler(seen)
        logged.propagate = was
    assert said == "UNKNOWN 'Exception iterating requests!'" and marked, said


def test_a_later_read_after_an_upstream_calls_error_names_it_as_the_asyncio_side_does() -> None:
    # the iterator raised an upstream call's error (a bare grpc.RpcError, as grpcio's server iterator raises
    # when its caller cancels): the first read raises the call's own UNKNOWN, that error its cause; a later
    # next() raised the same UNKNOWN again, where the asyncio side raises the InvalidStateError naming it
    upstream = grpc.RpcError()

    def forwarded() -> Iterator[Any]:
        yield streaming_pb2.Chunk(seq=0, data=b"first")
        raise upstream

    logged = logging.getLogger("grpc._channel")  # grpcio logs the iterator's error
    was, logged.disabled = logged.disabled, True
    try:
        with Client(config()) as client:
            client.dispense(PLUGIN_NAME)
            echo = echo_method(client.channel)
            stream = echo(forwarded())
            first = outcome(lambda _: list(stream), iter(()))
            later = outcome(lambda _: next(stream), iter(()))
            upload = upload_method(client.channel)
            future = upload.future(forwarded())
            results = [outcome(lambda _: future.result(), iter(())) for _ in range(2)]
    finally:
        logged.disabled = was
    assert isinstance(first, grpc.RpcError) and first.code() == grpc.StatusCode.UNKNOWN, described(first)
    chain, cause = [], first.__cause__
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__
    assert first.details() in DETAILS and upstream in chain, described(first)
    assert f"{type(later).__name__}: {later}" == (
        "InvalidStateError: the call ended when its request iterator raised RpcError (an earlier read raised the"
        " call's own UNKNOWN 'Exception iterating requests!', caused by it)"), described(later)
    # a future's outcome is settled: every result() gives the call's UNKNOWN
    assert [f"{type(e).__name__} {e.code().name}" for e in results if isinstance(e, grpc.RpcError)] == [
        f"{type(results[0]).__name__} UNKNOWN"] * 2, [described(e) for e in results]


def test_a_brokered_channels_streams_raise_the_iterators_error_too(tmp_path: Path) -> None:
    # a channel from the broker (a callback's: raw grpcio, the user's stubs on it) gave grpcio's UNKNOWN
    # "Exception iterating requests!" for every style of call, the user's error lost
    from kv_plugin_def import HANDSHAKE as KV_HANDSHAKE, PLUGIN_NAME as KV, KVPlugin

    from plugbay import ProcessRunner

    runner = ProcessRunner([sys.executable, str(REPO / "tests" / "plugins" / "async_plugins.py"), "kv"], cwd=tmp_path)

    def collect() -> dict[str, str]:
        said: dict[str, str] = {}
        with Client(ClientConfig(handshake=KV_HANDSHAKE, plugins={KV: KVPlugin()}, runner=runner,
                                 call_timeout=30)) as client:
            channel = client.broker.dial(int(client.dispense(KV).get("__streamer__")))  # the plugin serves it
            try:
                for how, call in calls(channel).items():
                    for plain in (False, True):
                        said[f"{how}{', plain' if plain else ''}"] = described(outcome(call, requests(plain)))
                said.update(read_twice(echo_method(channel)(requests(True))))
                said["after"] = repr(calls(channel)["stream_unary"](iter([streaming_pb2.Chunk(seq=7)])).seq)
            finally:
                channel.close()
        return said

    said = unheld(collect)
    assert said["kinds"] == "a grpc.Call: True, a grpc.Future: True", said
    assert said["later"] == ("InvalidStateError: the call ended when its request iterator raised SourceBroke: the"
                             " file being streamed could not be read (an earlier read raised it); cause None;"
                             " context None"), said
    assert said["after"] == "7", said  # the channel still serves calls


def echo_method(channel: grpc.Channel) -> Any:
    """The streamer's Echo, a stream-stream method."""
    return channel.stream_stream("/streaming.Streamer/Echo", request_serializer=streaming_pb2.Chunk.SerializeToString,
                                 response_deserializer=streaming_pb2.Chunk.FromString)


def read_twice(stream: Any) -> dict[str, str]:
    """What kinds of call object ``stream`` is, and what a read after the one that failed raised."""
    kinds = f"a grpc.Call: {isinstance(stream, grpc.Call)}, a grpc.Future: {isinstance(stream, grpc.Future)}"
    outcome(lambda _: list(stream), iter(()))
    return {"kinds": kinds, "later": described(outcome(lambda _: next(stream), iter(())))}


def test_a_plugins_brokered_channel_to_its_host_raises_the_iterators_error_too(tmp_path: Path) -> None:
    # the other side: the plugin streams into a server its host serves on the broker (a callback); it got
    # grpcio's UNKNOWN "Exception iterating requests!" for its own iterator's error
    from kv_plugin_def import HANDSHAKE as KV_HANDSHAKE, PLUGIN_NAME as KV, KVPlugin
    from streaming_plugin_def import StreamerServicer
    from streamingproto import streaming_pb2_grpc

    from plugbay import ProcessRunner

    runner = ProcessRunner([sys.executable, str(REPO / "tests" / "plugins" / "async_plugins.py"), "kv"], cwd=tmp_path)
    with Client(ClientConfig(handshake=KV_HANDSHAKE, plugins={KV: KVPlugin()}, runner=runner,
                             call_timeout=30)) as client:
        kv = client.dispense(KV)
        sid = client.broker.next_id()
        client.broker.accept_and_serve(sid, lambda s: streaming_pb2_grpc.add_StreamerServicer_to_server(
            StreamerServicer(), s))
        said = kv.get(f"__stream_back__{sid}")
    said = said.decode() if isinstance(said, bytes) else str(said)
    assert said == "ValueError: the plugin's own source broke", said


@contextmanager
def brokered_streamer(tmp_path: Path) -> Iterator[grpc.Channel]:
    """A channel from the broker to the streamer the kv plugin serves on it (grpcio's error log kept quiet)."""
    from kv_plugin_def import HANDSHAKE as KV_HANDSHAKE, PLUGIN_NAME as KV, KVPlugin

    from plugbay import ProcessRunner

    runner = ProcessRunner([sys.executable, str(REPO / "tests" / "plugins" / "async_plugins.py"), "kv"], cwd=tmp_path)
    logged = logging.getLogger("grpc._channel")  # grpcio logs each iterator's error
    was, logged.disabled = logged.disabled, True
    try:
        with Client(ClientConfig(handshake=KV_HANDSHAKE, plugins={KV: KVPlugin()}, runner=runner,
                                 call_timeout=30)) as client:
            with client.broker.dial(int(client.dispense(KV).get("__streamer__"))) as channel:
                yield channel
    finally:
        logged.disabled = was


def test_a_brokered_streams_reader_gets_the_iterators_error_after_its_exception_was_asked(tmp_path: Path) -> None:
    # the stream's exception() took the iterator's error for itself, and the read that followed raised
    # grpcio's UNKNOWN "Exception iterating requests!": the reader, who meets a stream's outcome, must get
    # the error. A stream's future side is grpcio's own, as on a Client's stream
    said: dict[str, str] = {}
    with Client(config()) as client:
        client.dispense(PLUGIN_NAME)
        stream = echo_method(client.channel)(requests(True))
        said["client's exception()"] = status(stream.exception(GUARD))
        said["client's read"] = described(outcome(lambda _: list(stream), iter(())))
    with brokered_streamer(tmp_path) as channel:
        stream = echo_method(channel)(requests(True))
        said["exception()"] = status(stream.exception(GUARD))
        said["read"] = described(outcome(lambda _: list(stream), iter(())))
    assert said["read"] in PLAIN and said["client's read"] in PLAIN, said
    grpcios = [f"_MultiThreadedRendezvous UNKNOWN {d!r}" for d in DETAILS]
    assert said["exception()"] in grpcios and said["client's exception()"] in grpcios, said


def status(error: BaseException | None) -> str:
    """A gRPC error's kind and status (its str() is many lines, with times), or what else it is."""
    if isinstance(error, grpc.RpcError):
        return f"{type(error).__name__} {error.code().name} {error.details()!r}"
    return described(error)


def test_a_brokered_streams_reader_racing_a_done_callback_gets_the_iterators_error(tmp_path: Path) -> None:
    # a done callback asking the call's exception() while the reader iterates (as a logging callback does):
    # the reader got grpcio's UNKNOWN in about 7 runs of 10
    runs = 100
    got: list[str] = []
    with brokered_streamer(tmp_path) as channel:
        echo = echo_method(channel)
        for _ in range(runs):
            asked = threading.Event()
            stream = echo(requests(True))
            stream.add_done_callback(lambda call: (call.exception(), asked.set()))
            got.append(described(outcome(lambda _: list(stream), iter(()))))
            assert asked.wait(GUARD), "the done callback never ran"
    wrong = [g for g in got if g not in PLAIN]
    assert not wrong, (len(wrong), runs, wrong[0])


def test_a_brokered_future_whose_iterator_raised_an_upstreams_error_keeps_the_calls_unknown(tmp_path: Path) -> None:
    # the iterator raised an upstream call's error (a bare grpc.RpcError): that is not this call's failure,
    # and a future's outcome is settled once, so every result() gives grpcio's UNKNOWN, caused by it (not an
    # InvalidStateError from the second one on)
    upstream = grpc.RpcError()

    def forwarded() -> Iterator[Any]:
        yield streaming_pb2.Chunk(seq=0, data=b"first")
        raise upstream

    with brokered_streamer(tmp_path) as channel:
        future = upload_method(channel).future(forwarded())
        results = [outcome(lambda _: future.result(), iter(())) for _ in range(3)]
    assert [status(e) for e in results] in [[f"_MultiThreadedRendezvous UNKNOWN {d!r}"] * 3 for d in DETAILS], [
        described(e) for e in results]
    assert all(e is results[0] and e.__cause__ is upstream for e in results), [described(e) for e in results]


def test_a_brokered_futures_done_callback_gets_the_future_its_caller_holds(tmp_path: Path) -> None:
    # grpcio's future passes itself to a done callback: the callback must get the future the caller holds,
    # whose result() raises the iterator's error, not grpcio's own call with its UNKNOWN
    given: queue.Queue[Any] = queue.Queue()
    with brokered_streamer(tmp_path) as channel:
        future = upload_method(channel).future(requests(False))
        future.add_done_callback(given.put)
        got = given.get(timeout=GUARD)
        same = got is future
        said = described(outcome(lambda _: got.result(), iter(())))
    assert same, "the done callback got another object than the future"
    assert said == OWN, said


def upload_method(channel: grpc.Channel) -> Any:
    """The streamer's Echo, called as a stream-unary method (the plugin waits for more requests)."""
    return channel.stream_unary("/streaming.Streamer/Echo", request_serializer=streaming_pb2.Chunk.SerializeToString,
                                response_deserializer=streaming_pb2.Chunk.FromString)
