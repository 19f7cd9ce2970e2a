"""asyncio servicers on the plugin side: ``async def`` handlers (tests/plugins/async_plugins.py) served by
plugbay's plugin server, driven by a plugbay host and by go-plugin 1.0.1's Go host (tests/go/kv_host)."""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import tempfile
import threading
import time
from typing import Any
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests import gobuild
from tests.resilience_util import wait_until  # also puts examples/kv on sys.path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "streaming"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402
from streaming_plugin_def import HANDSHAKE as STREAM_HANDSHAKE  # noqa: E402
from streaming_plugin_def import PLUGIN_NAME as STREAMER, StreamerClient, StreamerPlugin  # noqa: E402
from kvproto import kv_pb2  # noqa: E402
from streamingproto import streaming_pb2  # noqa: E402

from plugbay import CallTimeoutError, Client, ClientConfig, PluginExitedError, ProcessRunner  # noqa: E402

PLUGINS = str(REPO / "tests" / "plugins" / "async_plugins.py")


def kv_client(cwd: Path) -> Client:
    runner = ProcessRunner([sys.executable, PLUGINS, "kv"], cwd=cwd)
    return Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner,
                               call_timeout=20.0))


def stream_config(mode: str) -> ClientConfig:
    return ClientConfig(handshake=STREAM_HANDSHAKE, plugins={STREAMER: StreamerPlugin()},
                        cmd=[sys.executable, PLUGINS, mode], call_timeout=20.0)


def test_async_handlers_answer_on_one_shared_loop(tmp_path: Path) -> None:
    with kv_client(tmp_path) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("greeting", b"hello")
        assert kv.get("greeting") == b"hello"
        assert (tmp_path / "kv_greeting").read_bytes() == b"hello"
        first, second = kv.get("__loop__").decode(), kv.get("__loop__").decode()
        assert first == second and first.startswith("plugbay-aio-handlers ")
        with pytest.raises(grpc.RpcError) as err:  # `await context.abort(...)`, as under grpc.aio
            kv.get("missing")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "'missing'" in str(err.value.details())
        # calls run at once on the loop: a held call waits for an asyncio.Event another call sets
        held: list[bytes] = []
        waiter = threading.Thread(target=lambda: held.append(kv.get("__hold__")))
        waiter.start()
        try:
            assert wait_until(lambda: kv.get("__release__") == b"released" and held, 10.0, step=0.1)
        finally:
            waiter.join(20)
        assert held == [b"held"]


def test_a_call_that_ends_early_cancels_its_coroutine(tmp_path: Path) -> None:
    with kv_client(tmp_path) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("warm", b"1")  # the handler loop runs: the deadline below is the hold's alone
        with pytest.raises(CallTimeoutError):
            kv._stub.Get(kv_pb2.GetRequest(key="__hold__"), timeout=1.0)  # nobody releases it
        assert wait_until(lambda: kv.get("__cancelled__") == b"1", 10.0, step=0.1)
        kv.put("after", b"ok")  # the loop goes on serving
        assert kv.get("after") == b"ok"


def test_async_generators_stream_both_ways_and_a_cancelled_stream_closes_its_generator() -> None:
    with Client(stream_config("streamer")) as client:
        streamer = client.dispense(STREAMER)
        assert [c.seq for c in streamer.generate(50, 10)] == list(range(50))
        echoed = [c.data for c in streamer.echo(iter([streaming_pb2.Chunk(data=bytes([i])) for i in range(5)]))]
        assert echoed == [bytes([i]) for i in range(5)]
        before = streamer.stats()
        assert before.produced == 50 and before.echoed == 5 and before.cancelled == 1  # ran to its end
        call = streamer.generate(1_000_000, 10)
        assert [next(call).seq for _ in range(3)] == [0, 1, 2]
        call.cancel()
        assert wait_until(lambda: streamer.stats().cancelled == 2, 10.0, step=0.1)
        assert streamer.stats().produced < 1_000_000


def test_request_streams_left_open_do_not_starve_each_other() -> None:
    # Each open stream's next read holds a thread until its host sends again: reads on the loop's
    # default executor (a handful of threads) left the streams past the first few unanswered.
    streams = 24  # within the gate's 128 (ServeConfig.max_workers)
    barrier = threading.Barrier(streams)
    got: list[bytes] = []
    failed: list[BaseException] = []

    def one(streamer: StreamerClient, n: int) -> None:
        echoed = threading.Event()

        def requests() -> Iterator[streaming_pb2.Chunk]:
            yield streaming_pb2.Chunk(data=bytes([n]))
            echoed.wait(20)
            barrier.wait(20)  # every stream is open, each waiting for its next request to be read

        try:
            for chunk in streamer.echo(requests(), timeout=30):
                got.append(chunk.data)
                echoed.set()
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failed.append(exc)
            barrier.abort()

    with Client(stream_config("streamer")) as client:
        streamer = client.dispense(STREAMER)
        threads = [threading.Thread(target=one, args=(streamer, n)) for n in range(streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(40)
        assert not failed, failed[0]
        assert sorted(got) == [bytes([n]) for n in range(streams)]


def test_a_server_stream_written_as_a_coroutine_is_refused_with_what_to_do() -> None:
    with pytest.raises(PluginExitedError) as err:
        with Client(stream_config("bad-stream")):
            pass
    text = str(err.value) + "\n".join(err.value.stderr_tail)
    assert "must be an async generator" in text and "yield each response" in text, text


_go = gobuild.go_missing_reason()


@pytest.mark.go
@pytest.mark.skipif(_go is not None, reason=_go or "")
def test_go_plugin_host_drives_an_async_python_plugin(tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="ah") as sockets:  # short: a unix socket path fits
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_", "BASIC_"))}
        env.update({"KV_PLUGIN": f"{shlex.quote(sys.executable)} {shlex.quote(PLUGINS)} kv", "TMPDIR": sockets})
        for args in (["put", "greeting", "hello from go"], ["get", "greeting"]):
            done = gobuild.run_program(gobuild.build_go("kv_host"), ["--timeout", "60s", *args], env=env,
                                       cwd=tmp_path, timeout=90)
            assert done.returncode == 0, done.stdout + done.stderr
        assert "hello from go" in done.stdout
        assert (tmp_path / "kv_greeting").read_bytes() == b"hello from go"
        # a handler's own asyncio.TimeoutError: an error at once (the host's call deadline is 30 s)
        done = gobuild.run_program(gobuild.build_go("kv_host"), ["--timeout", "60s", "get", "__timeout__"], env=env,
                                   cwd=tmp_path, timeout=90)
        assert done.returncode == 1 and "code = Unknown" in done.stdout + done.stderr, done.stdout + done.stderr


class _Hang:
    """A coroutine that waits until cancelled, then takes 0.3 s (awaiting) to clean up."""

    def __init__(self) -> None:
        self.events: dict[str, float] = {}

    async def run(self, request: object = None, context: object = None) -> bytes:
        self.events["started"] = time.monotonic()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.events["cancelled"] = time.monotonic()
            await asyncio.sleep(0.3)
            self.events["cleaned"] = time.monotonic()
            raise
        return b""


@pytest.mark.parametrize("late", [False, True], ids=["hook-in-time", "call-ended-before-the-hook"])
def test_a_call_cut_short_cancels_its_coroutine_and_its_thread_waits_for_the_cleanup(
        late: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # A cancel freed the gRPC thread before the coroutine's cleanup ran; and grpcio neither runs nor
    # keeps a callback added after the call ended, so such a coroutine ran on, holding its thread.
    from concurrent.futures import ThreadPoolExecutor

    from plugbay.core.transport.aiohandlers import HandlerLoop, sync_handler

    loop = HandlerLoop()
    release = loop.hold()
    if late:
        real_get = loop.get

        def late_get() -> asyncio.AbstractEventLoop:
            time.sleep(0.8)  # a loaded machine: the deadline passes before the handler sets its hook
            return real_get()

        monkeypatch.setattr(loop, "get", late_get)
    hang = _Hang()
    wrapped = sync_handler("/t.S/Hang", grpc.unary_unary_rpc_method_handler(hang.run), loop)
    returned: dict[str, float] = {}

    def timed(request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            return wrapped.unary_unary(request, context)  # type: ignore[no-any-return]
        finally:
            returned["at"] = time.monotonic()

    # grpc.server does not shut its executor down: an idle pool's threads would end whenever the
    # garbage collector got to it, in the middle of a later test that counts threads
    pool = ThreadPoolExecutor(2, thread_name_prefix="test-grpc")
    server = grpc.server(pool)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "t.S", {"Hang": grpc.unary_unary_rpc_method_handler(timed)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as err:
                channel.unary_unary("/t.S/Hang")(b"", timeout=0.5)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert wait_until(lambda: "at" in returned, 10.0), "the handler's thread still waits for its coroutine"
        if "started" in hang.events:  # (cancelled before its first step, it never ran: nothing to clean up)
            assert "cleaned" in hang.events, hang.events
            assert returned["at"] >= hang.events["cleaned"]  # the thread waited for the coroutine's end
        else:
            assert late, "the coroutine never ran although the call was live when it began"
    finally:
        server.stop(0).wait(5)
        pool.shutdown(wait=True)
        release()


def test_stopping_the_handler_loop_cancels_what_runs_and_lets_it_clean_up() -> None:
    import concurrent.futures

    from plugbay.core.transport.aiohandlers import HandlerLoop, _OnLoop

    loop = HandlerLoop()
    release = loop.hold()
    hang = _Hang()
    call = _OnLoop(hang.run(), loop.get())
    assert wait_until(lambda: "started" in hang.events, 5.0)
    release()  # the last holder: the loop ends
    assert "cleaned" in hang.events, hang.events  # not "Task was destroyed but it is pending"
    with pytest.raises(concurrent.futures.CancelledError):
        call.done.result(1)


def test_a_generic_only_registration_is_checked_when_it_is_registered() -> None:
    # stubs from grpcio-tools before 1.62 (and hand-written handler tables) register generic handlers
    # only: the refusal came at the first call (UNKNOWN to the host) instead of at serve()
    from concurrent.futures import ThreadPoolExecutor

    from plugbay import ConfigError
    from plugbay.core.plugin.gate import HandlerGate
    from plugbay.core.plugin.gatedserver import GatedServer

    async def written_with_context_write(request: bytes, context: object) -> None:
        pass

    pool = ThreadPoolExecutor(1, thread_name_prefix="test-grpc")
    server = grpc.server(pool)
    try:
        gated = GatedServer(server, HandlerGate(2))
        with pytest.raises(ConfigError, match="must be an async generator"):
            gated.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
                "t.S", {"Gen": grpc.unary_stream_rpc_method_handler(written_with_context_write)}),))
    finally:
        server.stop(0).wait(5)
        pool.shutdown(wait=True)


def test_a_handler_raising_system_exit_fails_its_call_and_the_loop_serves_on(tmp_path: Path) -> None:
    # asyncio lets a SystemExit out of run_forever(): the shared loop ended, that call's thread waited
    # for good, and every later async call failed ("Event loop is closed")
    with kv_client(tmp_path) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        with pytest.raises(grpc.RpcError) as err:
            kv._stub.Get(kv_pb2.GetRequest(key="__system_exit__"), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNKNOWN, err.value
        assert kv.get("k") == b"v"
        assert kv.get("__loop__").decode().startswith("plugbay-aio-handlers ")


def test_a_handler_raising_timeout_error_fails_its_call_at_once_unary_and_streaming(tmp_path: Path) -> None:
    # asyncio.TimeoutError is the builtin TimeoutError, as is the one a wait on a concurrent future
    # raises when it runs out: the handler's own was taken for "not finished yet", so the call's
    # thread polled for ever and the host got its deadline (or, with none, no answer at all)
    with kv_client(tmp_path) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.dispense(PLUGIN_NAME)._stub.Get(kv_pb2.GetRequest(key="__timeout__"), timeout=20)
        assert err.value.code() == grpc.StatusCode.UNKNOWN, err.value
        assert "the handler's own timeout" in str(err.value.details())
    with Client(stream_config("streamer")) as client:
        streamer = client.dispense(STREAMER)
        echoed: list[bytes] = []
        with pytest.raises(grpc.RpcError) as err:
            for chunk in streamer.echo(iter([streaming_pb2.Chunk(data=b"a"), streaming_pb2.Chunk(data=b"__timeout__")]),
                                       timeout=20):
                echoed.append(chunk.data)
        assert err.value.code() == grpc.StatusCode.UNKNOWN, err.value
        assert echoed == [b"a"]


def test_a_handler_raising_cancelled_error_is_told_apart_from_a_call_that_ended(tmp_path: Path) -> None:
    # it was CANCELLED "the call ended before its handler did" while the call was still on; a
    # stream's handler doing so ended the stream as if it had finished (OK)
    with kv_client(tmp_path) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.dispense(PLUGIN_NAME)._stub.Get(kv_pb2.GetRequest(key="__cancel_itself__"), timeout=20)
        assert err.value.code() == grpc.StatusCode.CANCELLED, err.value
        assert "the handler was cancelled" in str(err.value.details()), err.value
    with Client(stream_config("streamer")) as client:
        streamer = client.dispense(STREAMER)
        echoed: list[bytes] = []
        with pytest.raises(grpc.RpcError) as err:
            for chunk in streamer.echo(iter([streaming_pb2.Chunk(data=b"a"),
                                             streaming_pb2.Chunk(data=b"__cancel_itself__")]), timeout=20):
                echoed.append(chunk.data)
        assert err.value.code() == grpc.StatusCode.CANCELLED, err.value
        assert "the handler was cancelled" in str(err.value.details()), err.value
        assert echoed == [b"a"]


def test_blocking_work_of_a_coroutine_does_not_keep_the_plugin_from_exiting(tmp_path: Path) -> None:
    # asyncio.to_thread ran on a ThreadPoolExecutor, whose threads the interpreter waits for at exit:
    # the plugin outlived Shutdown until its host killed it
    client = kv_client(tmp_path)
    runner = client.config.runner
    assert isinstance(runner, ProcessRunner)
    with client:
        kv = client.dispense(PLUGIN_NAME)
        with pytest.raises(CallTimeoutError):
            kv._stub.Get(kv_pb2.GetRequest(key="__block__"), timeout=1.0)
    code = runner.wait(0)
    assert code == 0, f"the plugin was killed ({code}) instead of exiting on its own after Shutdown"


@pytest.mark.parametrize("key", ["__ignore_cancel__", "__block_loop__"])
def test_a_coroutine_ignoring_its_cancel_or_blocking_the_loop_does_not_keep_the_plugin_from_exiting(
        tmp_path: Path, key: str, caplog: pytest.LogCaptureFixture) -> None:
    # serve()'s close waited for the handler loop's own end: 2 s of cleanup for the coroutines, 5 s when
    # they ignored their cancel or blocked the loop, past the host's grace (kill_grace 2 s, as go-plugin's)
    client = kv_client(tmp_path)
    runner = client.config.runner
    assert isinstance(runner, ProcessRunner)
    with client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("warm", b"1")  # the handler loop runs
        with pytest.raises(CallTimeoutError):
            kv._stub.Get(kv_pb2.GetRequest(key=key), timeout=1.0)
    code = runner.wait(0)
    assert code == 0, f"the plugin was killed ({code}) instead of exiting on its own after Shutdown"
    assert "did not exit within" not in caplog.text


def test_a_cut_short_server_stream_waits_for_its_generators_cleanup_two_seconds_at_most() -> None:
    # The generator's aclose() was waited on for 5 s while the documented bound is 2 s (the thread and
    # its gate slot stay held meanwhile).
    from plugbay.core.transport.aiohandlers import HandlerLoop, sync_handler

    class Context:
        def __init__(self) -> None:
            self.callbacks: list[Any] = []

        def add_callback(self, callback: Any) -> bool:
            self.callbacks.append(callback)
            return True

        def abort(self, code: Any, details: str) -> None:
            raise RuntimeError(f"abort {code} {details}")

    async def stream(request: bytes, context: Any) -> Any:
        try:
            yield b"one"
            yield b"two"
        finally:
            await asyncio.sleep(10)  # a slow cleanup (closing a remote resource, say)

    loop = HandlerLoop()
    release = loop.hold()
    try:
        wrapped = sync_handler("/x.S/Stream", grpc.unary_stream_rpc_method_handler(stream), loop)
        context = Context()
        responses = wrapped.unary_stream(b"", context)
        assert next(responses) == b"one"
        for callback in context.callbacks:  # the caller cancels: grpcio runs the context's callbacks
            callback()
        started = time.monotonic()
        assert list(responses) == []
        assert time.monotonic() - started < 4.0  # 2 s and the poll's half second, not 5 s
    finally:
        release()
