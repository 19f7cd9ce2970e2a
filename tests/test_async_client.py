"""AsyncClient: the host side on asyncio, against real plugins (the Python examples, go-plugin 1.0.1 Go ones).

Each test runs its own event loop (asyncio.run), so the loop's executor threads
end with the test; every wait is bounded by asyncio.wait_for as a hang guard.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from tests import gobuild
from tests.race_util import (assert_async_with_refused_on_another_loop, assert_wrong_loop, pid_gone,
                             start_from_another_loop)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
sys.path.insert(0, str(REPO / "examples" / "streaming"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402
from streaming_plugin_def import HANDSHAKE as STREAM_HANDSHAKE  # noqa: E402
from streaming_plugin_def import PLUGIN_NAME as STREAMER, StreamerPlugin  # noqa: E402
from streamingproto import streaming_pb2, streaming_pb2_grpc  # noqa: E402

from plugbay import (  # noqa: E402
    AsyncClient,
    Client,
    CallTimeoutError,
    ClientConfig,
    ClientStateError,
    ConfigError,
    GRPCBroker,
    GRPCPlugin,
    HealthWatcher,
    PlugbayError,
    PluginDiedError,
    ProcessRunner,
    UnknownPluginError,
)
from plugbay.core.host.aiochannel import WrongLoop  # noqa: E402

KV_PLUGIN = [sys.executable, str(REPO / "examples" / "kv" / "plugin.py")]
GUARD = 60.0  # no test step may take longer: a hang fails instead of stalling the run
_T = TypeVar("_T")


def run(coro: Awaitable[_T]) -> _T:
    async def guarded() -> _T:
        return await asyncio.wait_for(coro, GUARD)
    return asyncio.run(guarded())


def kv_config(cmd: list[str], **kw: Any) -> ClientConfig:
    return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=cmd, **kw)


def misbehave_kv(binary: str, **kw: Any) -> ClientConfig:
    """go-plugin's misbehaving Go KV plugin (trap keys __die__, __hang__, __log__), at most 60 s alive."""
    return kv_config([binary], env={"MISBEHAVE_MODE": "kv", "MISBEHAVE_MAX_SECONDS": "60"}, **kw)


def go_binary(name: str) -> str:
    return str(gobuild.go_program_or_skip(name))


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the KV plugins store kv_<key> files in their working folder


@pytest.mark.parametrize("plugin, options, mode", [
    ("python", {}, "plaintext"),
    ("python", {"auto_mtls": True}, "grpc-tls"),
    ("python", {"multiplex_broker": True}, "plaintext"),
    ("go", {"auto_mtls": True}, "relay-tls"),  # go-plugin's P-521 certificate: the OpenSSL relay
])
def test_kv_calls_in_every_connection_mode(plugin: str, options: dict[str, Any], mode: str,
                                           tmp_path: Path) -> None:
    cmd = KV_PLUGIN if plugin == "python" else [go_binary("kv_plugin")]

    async def main() -> list[bytes]:
        async with AsyncClient(kv_config(cmd, **options)) as client:
            assert client.connection_mode == mode
            kv = await client.dispense(PLUGIN_NAME)
            assert await client.dispense(PLUGIN_NAME) is kv
            await kv.put("hello", b"world")
            # many calls in flight at once on the one event loop
            return list(await asyncio.gather(*(kv.get("hello") for _ in range(50))))

    assert run(main()) == [b"world"] * 50
    assert (tmp_path / "kv_hello").read_bytes().startswith(b"world")  # the plugin really stored it


def test_an_error_from_the_plugin_reaches_the_caller_as_it_was_sent() -> None:
    async def main() -> grpc.RpcError:
        async with AsyncClient(kv_config(KV_PLUGIN)) as client:
            kv = await client.dispense(PLUGIN_NAME)
            with pytest.raises(grpc.RpcError) as caught:
                await kv.get("never-stored")
            with pytest.raises(UnknownPluginError):
                await client.dispense("no-such-plugin")
            return caught.value

    err = run(main())
    assert err.code() == grpc.StatusCode.NOT_FOUND and "put one first" in str(err.details())


def test_a_plugin_dying_in_a_call_is_a_plugin_died_error() -> None:
    misbehave = go_binary("misbehave")

    async def main() -> None:
        config = misbehave_kv(misbehave)
        async with AsyncClient(config) as client:
            kv = await client.dispense(PLUGIN_NAME)
            with pytest.raises(PluginDiedError) as caught:
                await kv.get("__die__")
            assert isinstance(caught.value, grpc.RpcError) and caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "code 7" in str(caught.value)
            assert client.exited and client.exit_code == 7
            with pytest.raises(PluginDiedError) as again:  # refused at once now, typed the same
                await kv.get("hello")
            assert again.value.sent is False

    run(main())


def test_the_default_deadline_applies_and_the_loop_keeps_running_meanwhile() -> None:
    misbehave = go_binary("misbehave")

    async def main() -> int:
        config = misbehave_kv(misbehave, call_timeout=0.5)
        async with AsyncClient(config) as client:
            kv = await client.dispense(PLUGIN_NAME)
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                for _ in range(1000):
                    await asyncio.sleep(0.01)
                    ticks += 1

            ticker = asyncio.create_task(tick())
            with pytest.raises(CallTimeoutError) as caught:
                await kv.get("__hang__")
            ticker.cancel()
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert await kv.get("__log__") == b"logged"  # the plugin still serves
            return ticks

    assert run(main()) >= 10  # the hung call never held the event loop


def test_a_plugin_killed_from_outside_fails_the_next_call_typed() -> None:
    async def main() -> None:
        async with AsyncClient(kv_config(KV_PLUGIN)) as client:
            kv = await client.dispense(PLUGIN_NAME)
            await kv.put("a", b"1")
            runner = client.sync_client.runner
            assert isinstance(runner, ProcessRunner) and runner.pid is not None
            os.kill(runner.pid, signal.SIGKILL)
            for _ in range(500):  # the exit watch closes the channels; bounded at about 10 s
                if client.exited:
                    break
                await asyncio.sleep(0.02)
            with pytest.raises(PluginDiedError) as caught:
                await kv.get("a")
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and "SIGKILL" in str(caught.value)

    run(main())


def test_calls_dispense_and_start_after_kill_are_refused() -> None:
    async def main() -> None:
        client = AsyncClient(kv_config(KV_PLUGIN))
        await client.start()
        kv = await client.dispense(PLUGIN_NAME)
        channel = client.channel
        pid = client.sync_client.runner.reattach_data()["pid"]
        await client.kill()
        await client.kill()  # idempotent
        assert pid_gone(int(pid))
        with pytest.raises(ClientStateError) as caught:
            await kv.get("a")
        assert isinstance(caught.value, grpc.RpcError) and caught.value.code() == grpc.StatusCode.CANCELLED
        with pytest.raises(ClientStateError):
            await client.dispense(PLUGIN_NAME)
        with pytest.raises(ClientStateError):
            await client.start()
        # a stub made on the killed Client's channel: grpc.aio would register its method on the destroyed C
        # channel (a use-after-free that aborted a host once); nothing is built, its call is refused typed
        from kvproto import kv_pb2, kv_pb2_grpc
        late = kv_pb2_grpc.KVStub(channel)
        assert late.Get._target is None  # made on any thread, a stub builds nothing until called on the loop
        with pytest.raises(ClientStateError):
            await late.Get(kv_pb2.GetRequest(key="a"))
        assert late.Get._target is None
        with pytest.raises(ClientStateError):
            await channel.wait_for_state_change(grpc.ChannelConnectivity.SHUTDOWN)  # grpc.aio's UsageError

    run(main())


def test_concurrent_dispenses_of_a_name_get_one_stub() -> None:
    # as the sync Client's dispense (under its lock): one stub per name, however many tasks ask at once
    async def main() -> None:
        async with AsyncClient(kv_config(KV_PLUGIN)) as client:
            first = await asyncio.gather(*(client.dispense(PLUGIN_NAME) for _ in range(3)))
            assert all(stub is first[0] for stub in first)
            assert await client.dispense(PLUGIN_NAME) is first[0]
            failed = await asyncio.gather(client.dispense("nope"), client.dispense("nope"), return_exceptions=True)
            assert all(isinstance(exc, UnknownPluginError) for exc in failed), failed
            with pytest.raises(UnknownPluginError):  # asked again: tried again, not the first answer kept
                await client.dispense("nope")

    run(main())


def test_a_dispense_from_another_event_loop_during_the_build_is_refused_typed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # it awaited the first loop's build: asyncio's bare RuntimeError (a Future of another loop)
    monkeypatch.chdir(tmp_path)
    client = AsyncClient(kv_config(KV_PLUGIN))
    loop_a = asyncio.new_event_loop()
    thread = threading.Thread(target=loop_a.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(client.start(), loop_a).result(30)
        with client.sync_client._lock:  # the first build waits for the Client's lock, as while a kill holds it
            first = asyncio.run_coroutine_threadsafe(client.dispense(PLUGIN_NAME), loop_a)
            deadline = time.monotonic() + 10
            while PLUGIN_NAME not in client._dispensed._building:  # the first build began
                assert time.monotonic() < deadline, "the first dispense did not begin its build"
                time.sleep(0.02)
            with pytest.raises(WrongLoop, match="on another event loop"):
                asyncio.run(asyncio.wait_for(client.dispense(PLUGIN_NAME), 5))
        assert first.result(30) is not None
    finally:
        asyncio.run_coroutine_threadsafe(client.kill(), loop_a).result(30)
        loop_a.call_soon_threadsafe(loop_a.stop)
        thread.join(5)
        loop_a.close()


def test_kill_during_calls_fails_them_as_killed() -> None:
    misbehave = go_binary("misbehave")

    async def main() -> None:
        config = misbehave_kv(misbehave, kill_grace=1.0)
        client = AsyncClient(config)
        await client.start()
        kv = await client.dispense(PLUGIN_NAME)
        hung = asyncio.create_task(kv.get("__hang__"))
        await asyncio.sleep(0.3)
        await client.kill()
        with pytest.raises(ClientStateError) as caught:
            await hung
        # what the connection's end looked like to the call (as on the sync side), typed as a kill
        assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert "was killed" in str(caught.value)

    run(main())


def test_cancelling_start_stops_the_plugin_it_launched() -> None:
    misbehave = go_binary("misbehave")
    runner = ProcessRunner([misbehave], env={"MISBEHAVE_MODE": "silent", "MISBEHAVE_MAX_SECONDS": "60"})

    async def main() -> float:
        client = AsyncClient(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner,
                                          start_timeout=30))
        starting = asyncio.create_task(client.start())
        for _ in range(250):  # until the plugin runs (it never prints its handshake line)
            if runner.pid is not None:
                break
            await asyncio.sleep(0.02)
        assert runner.pid is not None
        began = time.monotonic()
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        assert pid_gone(runner.pid)
        with pytest.raises(ClientStateError):
            await client.start()
        for _ in range(500):  # the client's own threads end with the failed start (bounded: about 10 s)
            if not any(t.name.startswith(f"plugbay-async-{client.name}") for t in threading.enumerate()):
                break
            await asyncio.sleep(0.02)
        assert not any(t.name.startswith(f"plugbay-async-{client.name}") for t in threading.enumerate())
        return time.monotonic() - began

    assert run(main()) < 20  # hang guard: it did not wait out start_timeout (30 s)


def test_cancelling_kill_still_stops_the_plugin() -> None:
    async def main() -> None:
        client = AsyncClient(kv_config(KV_PLUGIN))
        await client.start()
        pid = int(client.sync_client.runner.reattach_data()["pid"])
        killing = asyncio.create_task(client.kill())
        await asyncio.sleep(0)
        killing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await killing
        assert pid_gone(pid) and client.exited

    run(main())


def test_a_kill_task_cancelled_before_its_first_step_still_stops_the_plugin() -> None:
    # kill() was a coroutine function: a task cancelled before its first step never ran it, and
    # the plugin, its threads and the grpc.aio channel were left behind
    async def main() -> None:
        client = AsyncClient(kv_config(KV_PLUGIN))
        await client.start()
        pid = int(client.sync_client.runner.reattach_data()["pid"])
        channel = client.channel
        killing = asyncio.ensure_future(client.kill())
        killing.cancel()  # before the task's first step: its coroutine never runs
        with pytest.raises(asyncio.CancelledError):
            await killing

        def threads() -> list[str]:
            return [t.name for t in threading.enumerate()
                    if t.name.startswith((f"plugbay-async-{client.name}", f"plugbay-async-stop-{client.name}"))]

        for _ in range(500):  # the kill goes on on its own thread (bounded wait)
            if pid_gone(pid) and not threads() and channel._closing is not None:
                break
            await asyncio.sleep(0.02)
        assert pid_gone(pid) and client.exited
        assert threads() == [] and channel._closing is not None
        await channel._closing
        with pytest.raises(ClientStateError, match="was killed"):
            await client.dispense(PLUGIN_NAME)

    run(main())


def test_kill_begins_when_called_and_may_be_awaited_on_another_loop() -> None:
    # it began on the loop it was called on and could only be awaited there: awaited on another
    # loop (or made before asyncio.run's loop existed), it failed or began late
    client = AsyncClient(kv_config(KV_PLUGIN))
    run(client.start())
    pid = int(client.sync_client.runner.reattach_data()["pid"])

    async def made_here() -> Any:
        return client.kill()

    killing = run(made_here())  # made on this loop, which then ends
    for _ in range(500):  # it began when made (bounded wait)
        if pid_gone(pid):
            break
        time.sleep(0.02)
    assert pid_gone(pid) and client.exited
    asyncio.run(killing)  # awaited on another loop: the stop's result, then the client's end
    with pytest.raises(ClientStateError, match="was killed"):
        run(client.dispense(PLUGIN_NAME))


def test_a_kill_that_ends_the_client_as_its_start_finishes_leaves_nothing_connected() -> None:
    # start() built the grpc.aio channel after the kill had ended the client, returned success on a
    # killed client, and nothing closed that channel
    async def main() -> None:
        client = AsyncClient(kv_config(KV_PLUGIN))
        real_start = client.sync_client.start

        def start_then_killed() -> None:
            real_start()
            client.kill().close()  # a kill() made now (its coroutine never awaited): it runs on the stop thread
            for _ in range(500):  # bounded: until it has ended the client
                if client._ending:
                    break
                time.sleep(0.02)

        client._client.start = start_then_killed  # type: ignore[method-assign]
        with pytest.raises(ClientStateError, match="killed while it started"):
            await client.start()
        assert client._channel is None or client._channel._closing is not None
        assert client.exited

    run(main())


def test_streams_on_grpc_aio() -> None:
    async def main() -> None:
        config = ClientConfig(handshake=STREAM_HANDSHAKE, plugins={STREAMER: StreamerPlugin()},
                              cmd=[sys.executable, str(REPO / "examples" / "streaming" / "plugin.py")],
                              auto_mtls=True)
        async with AsyncClient(config) as client:
            streamer = await client.dispense(STREAMER)
            sizes = [len(chunk.data) async for chunk in streamer.generate(5, 1000)]
            assert sizes == [1000] * 5

            async def chunks() -> AsyncIterator[streaming_pb2.Chunk]:
                for i in range(3):
                    yield streaming_pb2.Chunk(data=bytes([i]) * 10)

            echoed = [chunk.data async for chunk in streamer.echo(chunks())]
            assert echoed == [bytes([i]) * 10 for i in range(3)]
            call = streamer.echo()  # the write/read side of a bidirectional call
            await call.write(streaming_pb2.Chunk(data=b"x"))
            assert (await call.read()).data == b"x"
            await call.done_writing()
            assert await call.read() is grpc.aio.EOF
            stats = await streamer.stats()
            assert stats.produced >= 5 and stats.echoed >= 4

    run(main())


class _SyncOnly(GRPCPlugin):
    def grpc_server(self, broker: GRPCBroker, server: grpc.Server) -> None:
        KVPlugin().grpc_server(broker, server)

    def grpc_client(self, broker: GRPCBroker, channel: grpc.Channel) -> Any:
        return KVPlugin().grpc_client(broker, channel)


def test_a_plugin_without_an_async_client_says_what_to_define() -> None:
    async def main() -> None:
        config = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: _SyncOnly()}, cmd=KV_PLUGIN)
        async with AsyncClient(config) as client:
            with pytest.raises(ConfigError, match="grpc_client_async"):
                await client.dispense(PLUGIN_NAME)
            # the channel still serves a generated stub built by hand
            from kvproto import kv_pb2, kv_pb2_grpc
            stub = kv_pb2_grpc.KVStub(client.channel)
            await stub.Put(kv_pb2.PutRequest(key="k", value=b"v"))
            assert (await stub.Get(kv_pb2.GetRequest(key="k"))).value == b"v"

    run(main())


def test_a_bad_config_fails_before_anything_starts() -> None:
    with pytest.raises(ConfigError):
        AsyncClient(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}))  # no cmd/runner


def test_reattach_and_close_leave_the_plugin_to_its_owner() -> None:
    async def main() -> None:
        with Client(kv_config(KV_PLUGIN)) as owner:
            owner.dispense(PLUGIN_NAME).put("shared", b"both")
            attached = AsyncClient(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                                                reattach=owner.reattach_config()))
            async with asyncio.timeout(GUARD):
                await attached.start()
                kv = await attached.dispense(PLUGIN_NAME)
                assert await kv.get("shared") == b"both"
                await attached.close()
            assert owner.dispense(PLUGIN_NAME).get("shared") == b"both"  # still running, still served
            with pytest.raises(ClientStateError):
                await kv.get("shared")

    run(main())


def test_cancelling_a_reattach_start_leaves_the_plugin_to_its_owner() -> None:
    with Client(kv_config(KV_PLUGIN)) as owner:
        owner.dispense(PLUGIN_NAME).put("shared", b"kept")
        runner = owner.runner
        assert isinstance(runner, ProcessRunner) and runner.pid is not None
        os.kill(runner.pid, signal.SIGSTOP)  # it cannot answer the reattaching host's health check
        try:
            attached = AsyncClient(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                                                reattach=owner.reattach_config(), start_timeout=20))

            async def main() -> None:
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(attached.start(), 1.0)

            run(main())
            assert runner.wait(0) is None  # not killed: it is the owner's
        finally:
            os.kill(runner.pid, signal.SIGCONT)
        assert owner.dispense(PLUGIN_NAME).get("shared") == b"kept"


def test_judging_a_dead_plugins_call_never_stalls_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    # a child of the plugin keeps its stderr pipe open after the plugin is gone: reading its last
    # lines waits (up to a second) for a pipe that does not end; not on the loop. Where that wait runs
    # is the behaviour (a loop stalled for it was a speed check: how long the loop paused)
    from plugbay.core.host.parts import ClientParts

    waited_on: list[int] = []
    drain = ClientParts._drain_logs

    def drain_and_say_where(self: ClientParts) -> None:
        waited_on.append(threading.get_ident())
        drain(self)

    monkeypatch.setattr(ClientParts, "_drain_logs", drain_and_say_where)
    cmd = ["sh", "-c", f"sleep 20 & exec {sys.executable} {REPO / 'examples' / 'kv' / 'plugin.py'}"]

    async def main() -> int:
        async with AsyncClient(kv_config(cmd)) as client:
            kv = await client.dispense(PLUGIN_NAME)
            await kv.put("a", b"1")
            runner = client.sync_client.runner
            assert isinstance(runner, ProcessRunner) and runner.pid is not None
            os.kill(runner.pid, signal.SIGKILL)
            for _ in range(500):  # bounded at about 10 s
                if client.exited:
                    break
                await asyncio.sleep(0.02)
            with pytest.raises(PluginDiedError):
                await kv.get("a")
            assert isinstance(await client.stderr_tail(), list)
            return threading.get_ident()

    loop_thread = run(main())
    assert waited_on, "the dead plugin's stderr pipe was never read through"
    assert loop_thread not in waited_on, "the wait for the dead plugin's stderr pipe ran on the event loop"


def test_writes_to_a_stream_that_ended_under_them_are_typed() -> None:
    async def main() -> None:
        config = ClientConfig(handshake=STREAM_HANDSHAKE, plugins={STREAMER: StreamerPlugin()},
                              cmd=[sys.executable, str(REPO / "examples" / "streaming" / "plugin.py")])
        client = AsyncClient(config)
        await client.start()
        streamer = await client.dispense(STREAMER)
        alive = streamer.echo()
        await alive.write(streaming_pb2.Chunk(data=b"x"))
        assert (await alive.read()).data == b"x"
        runner = client.sync_client.runner
        assert isinstance(runner, ProcessRunner) and runner.pid is not None
        os.kill(runner.pid, signal.SIGKILL)
        with pytest.raises(PluginDiedError):
            for _ in range(200):  # bounded: the exit ends the call within moments
                await alive.write(streaming_pb2.Chunk(data=b"y"))
                await asyncio.sleep(0.02)
        await client.kill()
        with pytest.raises(grpc.RpcError):
            await streamer.echo().write(streaming_pb2.Chunk(data=b"z"))
        with pytest.raises((ClientStateError, PluginDiedError)):
            await client.channel.channel_ready()

    run(main())


def test_a_write_that_grpc_aio_could_not_send_is_judged_by_the_plugins_exit() -> None:
    # grpc.aio reports a write whose connection failed under it as INTERNAL "Internal error from Core"
    # (about one run in six of the test above): that is the plugin's death, typed as such, not INTERNAL;
    # an INTERNAL status the plugin sent, whatever its words, stays what it is
    from plugbay.core.host.aiochannel import lost_send
    from plugbay.core.host.channel import ManagedChannel

    def status(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)

    failed = status(grpc.StatusCode.INTERNAL, "Internal error from Core")
    dead = ManagedChannel(grpc.insecure_channel("127.0.0.1:1"), 5.0, lambda wait: "exit status 137", "kv")
    assert isinstance(dead.translate(lost_send(failed)), PluginDiedError)
    alive = ManagedChannel(grpc.insecure_channel("127.0.0.1:1"), 5.0, lambda wait: None, "kv")
    assert "may not have received the call" in str(alive.translate(lost_send(failed)))
    sent = status(grpc.StatusCode.INTERNAL, "Internal error from Core: database constraint violated")
    assert lost_send(sent) is sent and dead.translate(sent) is sent
    assert dead.translate(failed) is failed  # a unary call's status is the plugin's, never rewritten
    for channel in (dead, alive):
        channel.current.close()


def test_the_client_belongs_to_the_loop_that_started_it() -> None:
    client = AsyncClient(kv_config(KV_PLUGIN))

    async def first() -> Any:
        await client.start()
        kv = await client.dispense(PLUGIN_NAME)
        await kv.put("a", b"1")
        return kv

    kv = run(first())
    pid = int(client.sync_client.runner.reattach_data()["pid"])

    async def second() -> None:
        with pytest.raises(ClientStateError, match="event loop that started it") as caught:
            await kv.get("a")
        assert isinstance(caught.value, grpc.RpcError)
        try:
            # that loop is gone: calling from a coroutine on it is no advice; a new client is
            assert "that loop has closed" in str(caught.value) and "make a new AsyncClient" in str(caught.value)
            assert "call from a coroutine on that loop" not in str(caught.value)
            # start() and dispense() here are refused too, not answered with a stub whose every call fails
            for use in (client.start, lambda: client.dispense(PLUGIN_NAME)):
                with pytest.raises(WrongLoop, match="was started on another event loop.*that loop has closed"):
                    await use()
            with pytest.raises(ConfigError, match=r"async_client\.sync_client\.channel"):
                HealthWatcher(client.channel)  # type: ignore[arg-type]
        finally:
            await client.kill()  # from this loop too: no error, the plugin stops

    run(second())
    assert pid_gone(pid)

    async def third() -> None:
        # killed (from the second loop): neither its loop nor a kill() is any use now; say it was killed
        with pytest.raises(WrongLoop, match=r"this AsyncClient was already killed \(or closed\)") as caught:
            await kv.get("a")
        assert "await its kill()" not in str(caught.value) and "make a new AsyncClient" in str(caught.value)

    run(third())


def test_async_with_refused_on_another_loop_leaves_the_client_to_its_loop() -> None:
    async def main() -> None:
        async with AsyncClient(kv_config(KV_PLUGIN)) as client:
            kv = await client.dispense(PLUGIN_NAME)
            await kv.put("a", b"1")

            await assert_async_with_refused_on_another_loop(client)
            # a refusal has no side effect: __aenter__ killed the plugin this loop still uses
            assert not client.exited
            assert await kv.get("a") == b"1"

    run(main())


def test_cancelling_start_works_when_the_loops_executor_is_busy() -> None:
    misbehave = go_binary("misbehave")
    runner = ProcessRunner([misbehave], env={"MISBEHAVE_MODE": "silent", "MISBEHAVE_MAX_SECONDS": "60"})
    release = threading.Event()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(1))
        busy = loop.run_in_executor(None, release.wait, GUARD)  # the user's own work holds the executor
        client = AsyncClient(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner,
                                          start_timeout=40))
        try:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.start(), 1.0)
            assert runner.pid is not None and pid_gone(runner.pid)
        finally:
            release.set()
            await busy

    began = time.monotonic()
    run(main())
    assert time.monotonic() - began < 20  # hang guard: not start_timeout (40 s)


def test_stream_calls_take_grpcs_own_argument_forms() -> None:
    async def main() -> None:
        config = ClientConfig(handshake=STREAM_HANDSHAKE, plugins={STREAMER: StreamerPlugin()},
                              cmd=[sys.executable, str(REPO / "examples" / "streaming" / "plugin.py")])
        async with AsyncClient(config) as client:
            stub = (await client.dispense(STREAMER)).stub
            chunks = [streaming_pb2.Chunk(data=b"a"), streaming_pb2.Chunk(data=b"b")]
            assert [c.data async for c in stub.Echo(request_iterator=iter(chunks))] == [b"a", b"b"]
            assert [c.data async for c in stub.Echo(iter(chunks), 5)] == [b"a", b"b"]
            # the sync Client's channel takes the same forms
            sync_stub = streaming_pb2_grpc.StreamerStub(client.sync_client.channel)
            got = await asyncio.to_thread(lambda: [c.data for c in sync_stub.Echo(request_iterator=iter(chunks))])
            assert got == [b"a", b"b"]

    run(main())


def test_only_a_deadline_answer_that_came_late_is_a_timeout() -> None:
    # shared by both sides (ManagedChannel.translate): an answer that arrived just past the
    # deadline is what the plugin said, unless it is a Go server's own "context deadline exceeded"
    from plugbay.core.host.channel import ManagedChannel

    def answer(code: grpc.StatusCode, details: str) -> grpc.RpcError:
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)

    managed = ManagedChannel(grpc.insecure_channel("unix:/nonexistent"), 1.0, name="p")
    try:
        late = answer(grpc.StatusCode.NOT_FOUND, "no value stored")
        assert managed.translate(late, past_deadline=True) is late
        go_deadline = managed.translate(answer(grpc.StatusCode.UNKNOWN, "context deadline exceeded"), True)
        assert isinstance(go_deadline, CallTimeoutError)
        assert go_deadline.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        other = answer(grpc.StatusCode.UNKNOWN, "handler panicked")
        assert managed.translate(other, past_deadline=True) is other
    finally:
        managed.current.close()


# go-plugin 1.0.1's brokered dials under AutoMTLS ask for the server name "unused" (its own
# defect, see tests/test_interop_broker_go.py): the Go case runs plain
@pytest.mark.parametrize("plugin, multiplex, auto_mtls", [("python", False, True), ("python", True, True),
                                                          ("go", False, False)])
def test_brokered_callbacks_from_an_async_host(plugin: str, multiplex: bool, auto_mtls: bool) -> None:
    sys.path.insert(0, str(REPO / "examples" / "counter"))
    from counter_plugin_def import HANDSHAKE as COUNTER_HANDSHAKE
    from counter_plugin_def import PLUGIN_NAME as COUNTER, CounterPlugin

    cmd = ([sys.executable, str(REPO / "examples" / "counter" / "plugin.py")] if plugin == "python"
           else [go_binary("counter_plugin")])
    calls: list[tuple[int, int]] = []

    class Multiplier:
        def sum(self, a: int, b: int) -> int:
            calls.append((a, b))
            return (a + 1) * b

    async def main() -> int:
        config = ClientConfig(handshake=COUNTER_HANDSHAKE, plugins={COUNTER: CounterPlugin()}, cmd=cmd,
                              auto_mtls=auto_mtls, multiplex_broker=multiplex)
        async with AsyncClient(config) as client:
            counter = await client.dispense(COUNTER)
            await counter.put("k", 3, Multiplier())  # the plugin calls back: (0+1)*3
            await counter.put("k", 4, Multiplier())  # (3+1)*4
            return int(await counter.get("k"))

    assert run(main()) == 16
    assert calls == [(0, 3), (3, 4)]  # each answer came from this host's helper


def _async_threads(client: AsyncClient) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("plugbay-async-") and client.name in t.name]


async def _until_no_threads(client: AsyncClient) -> list[str]:
    for _ in range(500):  # idle executor threads end moments after their shutdown (bounded: about 10 s)
        if not _async_threads(client):
            break
        await asyncio.sleep(0.02)
    return _async_threads(client)


def test_many_tasks_share_one_start_and_a_cancel_or_kill_ends_it_at_once() -> None:
    misbehave = go_binary("misbehave")

    def silent_client() -> tuple[AsyncClient, ProcessRunner]:
        runner = ProcessRunner([misbehave], env={"MISBEHAVE_MODE": "silent", "MISBEHAVE_MAX_SECONDS": "60"})
        return AsyncClient(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner,
                                        start_timeout=40)), runner

    async def wait_pid(runner: ProcessRunner) -> int:
        for _ in range(250):
            if runner.pid is not None:
                return runner.pid
            await asyncio.sleep(0.02)
        raise AssertionError("the plugin never started")

    async def main() -> None:
        client, runner = silent_client()
        starts = [asyncio.create_task(client.start()) for _ in range(6)]
        pid = await wait_pid(runner)
        for task in starts:
            task.cancel()
        results = await asyncio.gather(*starts, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results), results
        assert pid_gone(pid) and not await _until_no_threads(client)

        client, runner = silent_client()
        dispensers = [asyncio.create_task(client.dispense(PLUGIN_NAME)) for _ in range(6)]
        pid = await wait_pid(runner)
        await client.kill()
        results = await asyncio.gather(*dispensers, return_exceptions=True)
        assert all(isinstance(r, ClientStateError) for r in results), results
        assert pid_gone(pid) and not await _until_no_threads(client)

    began = time.monotonic()
    run(main())
    assert time.monotonic() - began < 20  # hang guard: neither waited out start_timeout (40 s)


def test_a_cancelled_reattach_start_never_stops_the_owners_plugin_whenever_it_lands() -> None:
    with Client(kv_config(KV_PLUGIN)) as owner:
        owner.dispense(PLUGIN_NAME).put("shared", b"kept")
        for delay in (0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.3):
            attached = AsyncClient(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                                                reattach=owner.reattach_config()))

            async def main(client: AsyncClient = attached, after: float = delay) -> None:
                starting = asyncio.create_task(client.start())
                await asyncio.sleep(after)
                starting.cancel()
                try:
                    await starting
                except asyncio.CancelledError:
                    pass
                else:  # it had finished before the cancel: let go as a host would
                    await client.close()
                assert not await _until_no_threads(client)

            run(main())
            assert attached.exited  # let go of (not left connected) ...
            assert owner.runner.wait(0) is None  # ... and the owner's plugin still runs
            assert owner.dispense(PLUGIN_NAME).get("shared") == b"kept"


def test_close_from_another_loop_types_the_calls_it_ends() -> None:
    misbehave = go_binary("misbehave")
    config = misbehave_kv(misbehave)
    with Client(config) as owner:
        attached = AsyncClient(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                                            reattach=owner.reattach_config()))
        calling = threading.Event()
        outcome: list[BaseException] = []

        async def first_loop() -> None:
            await attached.start()
            kv = await attached.dispense(PLUGIN_NAME)
            hung = asyncio.create_task(kv.get("__hang__"))
            await asyncio.sleep(0.2)
            calling.set()
            try:
                await asyncio.wait_for(hung, 15)
            except BaseException as exc:  # noqa: BLE001 - what the call ended with is the finding
                outcome.append(exc)

        thread = threading.Thread(target=lambda: asyncio.run(first_loop()), name="test-first-loop")
        thread.start()
        try:
            assert calling.wait(15)
            run(attached.close())  # from this thread's own loop
        finally:
            thread.join(20)
        assert len(outcome) == 1 and isinstance(outcome[0], ClientStateError), outcome
        assert owner.runner.wait(0) is None  # close() let go; the owner's plugin runs on


def test_a_write_after_done_writing_is_refused_at_once() -> None:
    async def main() -> None:
        config = ClientConfig(handshake=STREAM_HANDSHAKE, plugins={STREAMER: StreamerPlugin()},
                              cmd=[sys.executable, str(REPO / "examples" / "streaming" / "plugin.py")],
                              call_timeout=30)
        async with AsyncClient(config) as client:
            call = (await client.dispense(STREAMER)).echo()
            await call.write(streaming_pb2.Chunk(data=b"a"))
            await call.done_writing()
            with pytest.raises(asyncio.InvalidStateError):
                await asyncio.wait_for(call.write(streaming_pb2.Chunk(data=b"b")), 5)
            assert (await call.read()).data == b"a"

    run(main())


def test_after_a_failed_start_the_client_says_why() -> None:
    misbehave = go_binary("misbehave")

    async def main() -> None:
        config = kv_config([misbehave], env={"MISBEHAVE_MODE": "line", "MISBEHAVE_LINE": "not|a|handshake"})
        client = AsyncClient(config)
        with pytest.raises(PlugbayError) as first:
            await client.start()
        assert not isinstance(first.value, ClientStateError)
        with pytest.raises(ClientStateError, match="start failed.*make a new AsyncClient"):
            await client.dispense(PLUGIN_NAME)
        with pytest.raises(ClientStateError, match="start failed"):
            client.channel
        assert not await _until_no_threads(client)

    run(main())


def test_a_start_from_another_event_loop_while_the_first_one_starts_is_refused_typed(tmp_path: Path) -> None:
    # the plugin's handshake comes after a second: the other loop's start() surely meets the start under way
    slow = ["sh", "-c", f"sleep 1; exec {' '.join(KV_PLUGIN)}"]
    client = AsyncClient(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                                      runner=ProcessRunner(slow, cwd=str(tmp_path))))
    async def main() -> object:
        starting = asyncio.ensure_future(client.start())
        await asyncio.sleep(0.1)
        assert client._starting is not None and client._channel is None
        error = await start_from_another_loop(client.start)
        await starting
        kv = await client.dispense(PLUGIN_NAME)
        await kv.put("k", b"v")  # the first loop's start is unharmed
        await client.kill()
        return error

    assert_wrong_loop(run(main()))
