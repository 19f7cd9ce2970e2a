"""A host broker's first brokered servers, asked for at once or while it closes, join the process's
spare holder once, and close() leaves it: no spare server, builder thread or spares folder outlives
the last Client. A kill that removes the folder a callback's server is being bound in fails that
call with BrokerClosedError, not as a socket-folder (TMPDIR) problem.

Real parts: the go-plugin 1.0.1 Go counter plugin as a child process dialing the host's callbacks.
Joining the holder is slowed down (0.2 s) so the calls always overlap.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from plugbay import AsyncClient, BrokerClosedError, Client, ClientConfig
from plugbay.core.broker import spares
from tests.gobuild import go_program_or_skip
from tests.thread_util import wait_for

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "counter"))
from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin  # noqa: E402
from counterproto import counter_pb2_grpc  # noqa: E402

pytestmark = pytest.mark.go


@pytest.fixture(scope="module")
def go_plugin() -> str:
    return str(go_program_or_skip("counter_plugin"))


class Helper:
    def sum(self, a: int, b: int) -> int:
        return a + b


def users() -> int:
    holder = spares._SPARES
    return holder._users if holder is not None else 0


@pytest.fixture()
def folder() -> Iterator[Path]:
    """The temp dir for the test: short, so the sockets' paths stay under 108 bytes."""
    path = tempfile.mkdtemp(prefix="bks", dir="/tmp")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture()
def slow_join(folder: Path, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Joining the spare holder takes 0.2 s (set once it began); temp folders go to ``folder``."""
    if users():
        pytest.skip("another broker of this process holds the spare servers")
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.chdir(folder)  # the Go counter plugin keeps its values in files named kv_<key>
    entered = threading.Event()
    join = spares.join_spares

    def slow() -> spares.SpareServer:
        entered.set()
        time.sleep(0.2)
        return join()

    monkeypatch.setattr(spares, "join_spares", slow)
    return entered


def nothing_left(folder: Path) -> None:
    assert users() == 0
    wait_for(lambda: not any(t.name == "plugbay-broker-spare" for t in threading.enumerate()),
             "the spare builder thread to end", timeout=10)
    assert [n for n in os.listdir(folder) if n.startswith("plugbay-spares-")] == []


def config(plugin: str) -> ClientConfig:
    return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()}, cmd=[plugin])


def test_concurrent_first_accept_and_serve_calls_leave_no_spare_holder(
        go_plugin: str, slow_join: threading.Event, folder: Path) -> None:
    with Client(config(go_plugin)) as client:
        counter = client.dispense(PLUGIN_NAME)
        broker = client.broker
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def serve_one() -> None:
            try:
                barrier.wait(10)
                sid = broker.next_id()
                broker.accept_and_serve(sid, lambda s: counter_pb2_grpc.add_AddHelperServicer_to_server(
                    counter_pb2_grpc.AddHelperServicer(), s))
                broker.stop_serving(sid)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=serve_one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        assert users() == 1
        counter.put("k", 1, Helper())
        assert counter.get("k") == 1
    nothing_left(folder)


def test_concurrent_async_puts_leave_no_spare_holder(
        go_plugin: str, slow_join: threading.Event, folder: Path) -> None:
    async def main() -> None:
        async with AsyncClient(config(go_plugin)) as client:
            counter = await client.dispense(PLUGIN_NAME)
            await asyncio.gather(*(counter.put(f"k{i}", i, Helper()) for i in range(8)))
            assert await counter.get("k7") == 7

    asyncio.run(asyncio.wait_for(main(), 60))
    nothing_left(folder)


def test_accept_and_serve_racing_close_leaves_no_spare_holder(
        go_plugin: str, slow_join: threading.Event, folder: Path) -> None:
    with Client(config(go_plugin)) as client:
        client.dispense(PLUGIN_NAME)
        broker = client.broker
        sid = broker.next_id()
        raised: list[BaseException] = []

        def serve() -> None:
            try:
                broker.accept_and_serve(sid, lambda s: None)
            except BaseException as exc:
                raised.append(exc)

        t = threading.Thread(target=serve)
        t.start()
        assert slow_join.wait(10)  # the first accept_and_serve is joining the spare holder
        broker.close()
        t.join(10)
        assert not t.is_alive()
        assert len(raised) == 1 and isinstance(raised[0], BrokerClosedError), raised
    nothing_left(folder)


@pytest.mark.parametrize("host", ["sync", "asyncio"])
def test_a_put_whose_callback_server_is_being_built_when_the_client_is_killed_says_the_broker_closed(
        host: str, go_plugin: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # kill() removed the folders the callback's server was binding in: the put said "could not listen on
    # unix socket ...; check that its folder exists, is writable" (a BrokerError blaming TMPDIR)
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.chdir(folder)
    entered, killed = threading.Event(), threading.Event()
    build = spares.build_server

    def held_build(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name != "plugbay-broker-spare":
            entered.set()
            killed.wait(10)
        return build(*args, **kwargs)

    monkeypatch.setattr(spares, "build_server", held_build)

    def kill_when_entered(kill: Callable[[], None]) -> None:
        assert entered.wait(20)
        kill()
        killed.set()

    if host == "sync":
        client = Client(config(go_plugin))
        counter = client.dispense(PLUGIN_NAME)
        killer = threading.Thread(target=kill_when_entered, args=(client.kill,))
        killer.start()
        with pytest.raises(BrokerClosedError, match="the broker closed while serving"):
            counter.put("k", 1, Helper())
        killer.join(30)
    else:
        async def main() -> None:
            aclient = AsyncClient(config(go_plugin))
            acounter = await aclient.dispense(PLUGIN_NAME)
            killer = threading.Thread(target=kill_when_entered, args=(lambda: asyncio.run(aclient.kill()),))
            killer.start()
            try:
                with pytest.raises(BrokerClosedError, match="the broker closed while serving"):
                    await acounter.put("k", 1, Helper())
            finally:
                killer.join(30)

        asyncio.run(asyncio.wait_for(main(), 60))
    nothing_left(folder)
