"""asyncio servicers on brokered servers, on either side, against real plugins (Python and go-plugin's Go).

A brokered server (GRPCBroker.accept_and_serve) is a sync grpcio server like the plugin's own; an
``async def`` servicer registered on it runs on plugbay's asyncio handler loop, or on the loop the
caller passes (an AsyncClient host's own). Before, grpcio called the coroutine function and tried to
send the coroutine object as the answer: the plugin's callback failed.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests import gobuild
from tests.resilience_util import wait_until  # also puts examples/kv on sys.path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "counter"))
PLUGINS = str(REPO / "tests" / "plugins" / "async_plugins.py")

from counter_plugin_def import HANDSHAKE as COUNTER_HANDSHAKE  # noqa: E402
from counter_plugin_def import PLUGIN_NAME as COUNTER, CounterPlugin  # noqa: E402
from counterproto import counter_pb2, counter_pb2_grpc  # noqa: E402
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import AsyncClient, Client, ClientConfig, ProcessRunner  # noqa: E402

GUARD = 60.0  # no asyncio test step may take longer: a hang fails instead of stalling the run


def _counter_cmd(plugin: str) -> list[str]:
    if plugin == "python":
        return [sys.executable, str(REPO / "examples" / "counter" / "plugin.py")]
    return [str(gobuild.go_program_or_skip("counter_plugin"))]


def _loop_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("plugbay-aio-handlers", "plugbay-aio-reads"))]


class _AsyncAdder:
    """An ``async def sum`` helper: where each call ran (thread, running loop)."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, asyncio.AbstractEventLoop]] = []

    async def sum(self, a: int, b: int) -> int:
        await asyncio.sleep(0)  # a real await point on whichever loop runs it
        self.ran.append((threading.current_thread().name, asyncio.get_running_loop()))
        return a + b


@pytest.mark.parametrize("plugin", ["python", "go"])
def test_a_sync_host_serves_an_async_helper_on_plugbays_loop(plugin: str, tmp_path: Path) -> None:
    adder = _AsyncAdder()
    config = ClientConfig(handshake=COUNTER_HANDSHAKE, plugins={COUNTER: CounterPlugin()},
                          runner=ProcessRunner(_counter_cmd(plugin), cwd=tmp_path), call_timeout=20.0)
    with Client(config) as client:
        counter = client.dispense(COUNTER)
        counter.put("k", 3, adder)  # the plugin calls back into this host's AddHelper: 0 + 3
        counter.put("k", 4, adder)  # 3 + 4
        assert counter.get("k") == 7
        assert [name for name, _ in adder.ran] == ["plugbay-aio-handlers"] * 2
        assert adder.ran[0][1] is adder.ran[1][1]  # one loop for every callback, not one per call
    # the broker held the loop until the client closed; nothing else holds it
    assert wait_until(lambda: not _loop_threads(), 5.0), _loop_threads()


@pytest.mark.parametrize("plugin", ["python", "go"])
def test_an_async_host_serves_an_async_helper_on_its_own_loop(plugin: str, tmp_path: Path) -> None:
    adder = _AsyncAdder()

    async def main() -> tuple[int, asyncio.AbstractEventLoop]:
        config = ClientConfig(handshake=COUNTER_HANDSHAKE, plugins={COUNTER: CounterPlugin()},
                              runner=ProcessRunner(_counter_cmd(plugin), cwd=tmp_path), call_timeout=20.0)
        async with AsyncClient(config) as client:
            counter = await client.dispense(COUNTER)
            await counter.put("k", 5, adder)
            await counter.put("k", 6, adder)
            return int(await counter.get("k")), asyncio.get_running_loop()

    async def guarded() -> tuple[int, asyncio.AbstractEventLoop]:
        return await asyncio.wait_for(main(), GUARD)

    value, loop = asyncio.run(guarded())
    assert value == 11
    # on the loop that awaited put(), so the helper may use that loop's objects (locks, clients)
    assert [ran_on for _, ran_on in adder.ran] == [loop, loop]
    assert wait_until(lambda: not _loop_threads(), 5.0), _loop_threads()


def test_a_plugin_serves_an_async_servicer_on_a_brokered_server(tmp_path: Path) -> None:
    runner = ProcessRunner([sys.executable, PLUGINS, "kv"], cwd=tmp_path)
    with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner,
                             call_timeout=20.0)) as client:
        sid = int(client.dispense(PLUGIN_NAME).get("__helper__"))  # the plugin serves AddHelper on it
        channel = client.broker.dial(sid)
        try:
            helper = counter_pb2_grpc.AddHelperStub(channel)
            answers = [helper.Sum(counter_pb2.SumRequest(a=a, b=7), timeout=20).r for a in (2, 3)]
        finally:
            channel.close()
    assert answers == [14, 21]  # the async Sum answered: a*b


class _Waits:
    """A coroutine handler that waits until told, noting whether it was cancelled."""

    def __init__(self) -> None:
        self.started = threading.Event()

    async def run(self, request: bytes, context: Any) -> bytes:
        self.started.set()
        await asyncio.Event().wait()
        return b""


def _serve_one(handler: Any) -> tuple[grpc.Server, ThreadPoolExecutor, str]:
    pool = ThreadPoolExecutor(2, thread_name_prefix="test-grpc")
    server = grpc.server(pool)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", {"Call": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, pool, f"127.0.0.1:{port}"


def test_a_call_on_a_callers_loop_that_stops_is_refused_instead_of_waiting_forever() -> None:
    # The host's loop ended (asyncio.run returned) while a callback's coroutine waited on it: nothing
    # would ever run the coroutine or its cancel, so the call's gRPC thread waited for good.
    from plugbay.core.transport.aiohandlers import CallerLoop, HandlerLoop, sync_handler

    user = asyncio.new_event_loop()
    thread = threading.Thread(target=user.run_forever, name="test-user-loop")
    thread.start()
    source = CallerLoop(user, HandlerLoop())
    waits = _Waits()
    returned = threading.Event()
    wrapped = sync_handler("/t.S/Call", grpc.unary_unary_rpc_method_handler(waits.run), source)

    def timed(request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            return wrapped.unary_unary(request, context)  # type: ignore[no-any-return]
        finally:
            returned.set()

    server, pool, address = _serve_one(grpc.unary_unary_rpc_method_handler(timed))
    try:
        with grpc.insecure_channel(address) as channel:
            call = channel.unary_unary("/t.S/Call").future(b"", timeout=30)
            assert waits.started.wait(10)
            user.call_soon_threadsafe(user.stop)
            thread.join(5)
            with pytest.raises(grpc.RpcError) as err:
                call.result(timeout=15)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
        assert returned.wait(5), "the handler's thread still waits on a loop that no longer runs"
    finally:
        if thread.is_alive():
            user.call_soon_threadsafe(user.stop)
            thread.join(5)
        for task in asyncio.all_tasks(user):  # what the stopped loop still holds settles here
            task.cancel()
        user.run_until_complete(asyncio.sleep(0.1))
        server.stop(0).wait(5)
        pool.shutdown(wait=True)
        source.release()
        user.close()


def test_a_call_after_the_last_holder_let_go_is_refused_as_unavailable() -> None:
    from plugbay.core.transport.aiohandlers import HandlerLoop, sync_handler

    loop = HandlerLoop()
    release = loop.hold()
    waits = _Waits()
    wrapped = sync_handler("/t.S/Call", grpc.unary_unary_rpc_method_handler(waits.run), loop)
    release()  # the server stopped; a call that raced its stop comes after
    server, pool, address = _serve_one(wrapped)
    try:
        started = time.monotonic()
        with grpc.insecure_channel(address) as channel:
            with pytest.raises(grpc.RpcError) as err:
                channel.unary_unary("/t.S/Call")(b"", timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
        assert "stopping" in str(err.value.details())
        assert time.monotonic() - started < 5
        assert not waits.started.is_set()
        assert not _loop_threads()  # no loop was started for it (nothing would end it)
    finally:
        server.stop(0).wait(5)
        pool.shutdown(wait=True)


def test_the_handler_loop_ends_with_its_last_holder_and_starts_again_for_a_new_one() -> None:
    from plugbay.core.transport.aiohandlers import HandlerLoop

    loop = HandlerLoop()
    first, second = loop.hold(), loop.hold()
    one = loop.get()
    first()
    first()  # a second release of the same hold changes nothing
    assert loop.get() is one and one.is_running()
    second()
    assert wait_until(lambda: one.is_closed(), 5.0)
    with pytest.raises(RuntimeError, match="no server holds"):
        loop.get()
    third = loop.hold()
    try:
        assert loop.get() is not one
    finally:
        third()
    assert wait_until(lambda: not _loop_threads(), 5.0), _loop_threads()


def test_a_hand_written_generic_handler_takes_one_hold_however_many_calls() -> None:
    # A generic handler that builds its method handler in service() (as grpc's docs write one) missed
    # the adapter's cache on every call: each call made a new loop source, with a hold on the process
    # loop and a clean-up entry kept until the server stopped.
    import shutil
    import tempfile

    from plugbay._proto.grpc.health.v1 import health_pb2
    from plugbay.core.broker.brokertransport import BrokerTransport
    from plugbay.core.transport.aiohandlers import LOOP
    from tests.test_broker import _close_pair, _make_pair

    async def check(request: Any, context: Any) -> Any:
        await asyncio.sleep(0)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    class Dynamic(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, details: Any) -> Any:
            if details.method != "/grpc.health.v1.Health/Check":
                return None
            return grpc.unary_unary_rpc_method_handler(
                check, request_deserializer=health_pb2.HealthCheckRequest.FromString,
                response_serializer=health_pb2.HealthCheckResponse.SerializeToString)

    user = asyncio.new_event_loop()
    thread = threading.Thread(target=user.run_forever, name="test-user-loop")
    thread.start()
    folder = tempfile.mkdtemp(prefix="bk", dir="/tmp")  # short: unix socket paths stay under 108 bytes
    pair = _make_pair(folder, BrokerTransport(socket_dir=folder), BrokerTransport(socket_dir=folder))
    try:
        sid = pair.host.next_id()
        pair.host.accept_and_serve(sid, lambda s: s.add_generic_rpc_handlers((Dynamic(),)), loop=user)
        channel = pair.plugin.dial(sid)
        call = channel.unary_unary("/grpc.health.v1.Health/Check",
                                   request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                                   response_deserializer=health_pb2.HealthCheckResponse.FromString)
        for _ in range(50):
            assert call(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        assert LOOP._holds == 1  # the one server's, not one per call
        channel.close()
    finally:
        _close_pair(pair)
        user.call_soon_threadsafe(user.stop)
        thread.join(5)
        user.close()
        shutil.rmtree(folder, ignore_errors=True)
    assert LOOP._holds == 0


@pytest.mark.parametrize("plugin", ["python", "go"])
def test_a_helper_coroutine_that_kills_its_own_client_does_not_deadlock(plugin: str, tmp_path: Path) -> None:
    # The kill stops the brokered server, whose stop waits for its gRPC thread; that thread waited for
    # the coroutine, which waited for the kill: it hung for good (a sync helper's kill ended in ~1 s).
    config = ClientConfig(handshake=COUNTER_HANDSHAKE, plugins={COUNTER: CounterPlugin()},
                          runner=ProcessRunner(_counter_cmd(plugin), cwd=tmp_path), call_timeout=20.0)
    client = Client(config)
    killed = threading.Event()

    class KillsItsClient:
        async def sum(self, a: int, b: int) -> int:
            client.kill()  # blocks this loop's thread until the kill is done
            killed.set()
            return a + b

    try:
        client.start()
        counter = client.dispense(COUNTER)
        outcome: list[BaseException | None] = []

        def put() -> None:
            try:
                counter.put("k", 1, KillsItsClient())
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - the call ends however the kill ends it
                outcome.append(exc)

        caller = threading.Thread(target=put, name="test-put")
        caller.start()
        assert killed.wait(30), "the kill inside the helper never finished"
        caller.join(30)
        assert not caller.is_alive()
        assert client.runner.wait(10) is not None  # the plugin is stopped, not orphaned
    finally:
        client.kill()
    assert wait_until(lambda: not _loop_threads(), 10.0), _loop_threads()


def test_a_callers_loop_that_is_closed_is_refused_with_a_runtime_error() -> None:
    from plugbay.core.transport.aiohandlers import CallerLoop, HandlerLoop

    user = asyncio.new_event_loop()
    user.close()
    source = CallerLoop(user, HandlerLoop())
    try:
        with pytest.raises(RuntimeError, match="event loop this server's async handlers run on is closed"):
            source.get()
    finally:
        source.release()


def test_a_put_cancelled_while_its_helper_server_starts_still_stops_that_server(tmp_path: Path) -> None:
    """AsyncCounterClient.put cancelled at its first await (the helper's server starting on a thread):
    the server it started is stopped once it listens. Before, put's ``finally`` was not reached and the
    server (a socket and its threads) lived until kill()."""
    adder = _AsyncAdder()

    async def main() -> tuple[int, int, int]:
        config = ClientConfig(handshake=COUNTER_HANDSHAKE, plugins={COUNTER: CounterPlugin()},
                              runner=ProcessRunner(_counter_cmd("go"), cwd=tmp_path), call_timeout=20.0)
        async with AsyncClient(config) as client:
            counter = await client.dispense(COUNTER)
            await counter.put("k", 1, adder)
            broker = client.broker
            for _ in range(5):
                put = asyncio.ensure_future(counter.put("k", 1, adder))
                await asyncio.sleep(0)  # put runs to its first await: the server starting on a thread
                put.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await put
            left = len(broker._served)
            for _ in range(100):  # each started server is stopped as soon as it listens
                if not broker._served:
                    break
                await asyncio.sleep(0.05)
            stopped = len(broker._served)
            await counter.put("k", 1, adder)  # the client still works
            return left, stopped, int(await counter.get("k"))

    async def guarded() -> tuple[int, int, int]:
        return await asyncio.wait_for(main(), GUARD)

    left, stopped, value = asyncio.run(guarded())
    assert stopped == 0, f"{left} helper servers were running after the cancels, {stopped} still are"
    assert value == 2  # the cancelled puts never reached the plugin
