"""The host's brokers of go-plugin (Go) plugins cost no thread per plugin: their streams run on grpc.aio on
one shared asyncio loop ("plugbay-io", which also serves every plugin's pipes, exits and TLS relays,
plus grpcio's one poller thread for the process), which starts with the first plugin and is joined when
the last Client closes, and the callback server started ahead of time is one for the process too.

Real parts: go-plugin 1.0.1 Go plugins (tests/go/kv_plugin, tests/go/counter_plugin) as child
processes, brokered callbacks into this host, a real SIGKILL.
"""

from __future__ import annotations

import gc
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from plugbay import BrokerClosedError, Client, ClientConfig
from plugbay.core.transport import aioloop
from plugbay.core.transport.secure import Redial
from tests.gobuild import go_program_or_skip
from tests.thread_util import plugbay_threads, thread_names, wait_for  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "kv"))
sys.path.insert(0, str(ROOT / "examples" / "counter"))
import counter_plugin_def as counter  # noqa: E402
import kv_plugin_def as kv  # noqa: E402

# grpcio's sync API: the channel spin thread and the request consumer of an open stream-stream call
SYNC_STREAM_THREAD = " (_run)"
POLLER = " (_poll_wrapper)"  # grpc.aio's completion-queue poller, one per process


@pytest.fixture(scope="module")
def go_plugins() -> dict[str, str]:
    return {name: str(go_program_or_skip(name)) for name in ("kv_plugin", "counter_plugin")}


def kinds(names: list[str]) -> list[str]:
    """Names without grpcio's running thread number ("Thread-7 (_run)" -> "(_run)")."""
    return sorted(re.sub(r"^Thread-\d+ ", "", n) for n in names)


def no_stdio_call() -> bool:  # each Client's short GRPCStdio call ends by itself (no sink)
    return not any(n.startswith("plugbay-stdio") for n in thread_names())


class Helper:
    """The host's AddHelper: not plain addition, so the stored value proves this host answered."""

    def __init__(self) -> None:
        self.calls = 0

    def sum(self, a: int, b: int) -> int:
        self.calls += 1
        return a + b + 1000


@contextmanager
def kv_clients(plugin: str, n: int, auto_mtls: bool = False) -> Iterator[list[Client]]:
    with ExitStack() as stack:
        clients = [stack.enter_context(Client(ClientConfig(
            handshake=kv.HANDSHAKE, plugins={kv.PLUGIN_NAME: kv.KVPlugin()}, cmd=[plugin], name=f"kv{i}",
            auto_mtls=auto_mtls))) for i in range(n)]
        yield clients


def no_poller() -> bool:
    return not any(POLLER in name for name in thread_names())


def gained_by(plugin: str, n: int, auto_mtls: bool) -> list[str]:
    """The threads the host gains with ``n`` live Go KV plugins, each dispensed and given one Put."""
    # grpc.aio's poller lives until its last channel is freed, and earlier tests' closed channels may
    # wait in reference cycles for the garbage collector: then the plugins below would not gain it
    gc.collect()
    wait_for(no_poller, "grpc.aio's poller of earlier tests' channels to end")
    wait_for(no_stdio_call, "the stdio calls to end")
    before = thread_names()
    with kv_clients(plugin, n, auto_mtls) as clients:
        for client in clients:
            store = client.dispense(kv.PLUGIN_NAME)  # a go-plugin plugin: the broker stream opens here
            wait_for(lambda: client.broker.call is not None, "the broker stream opened at dispense")
            store.put(f"k-{client.name}", b"v")
            assert client.connection_mode == ("relay-tls" if auto_mtls else "plaintext")
        wait_for(no_stdio_call, "the stdio calls to end")
        gained = thread_names()
        for name in before:
            gained.remove(name)
    # none left after close: the last Client joined the shared loop; grpcio's poller ends with its channel
    assert plugbay_threads() == [] and not aioloop.shared().running
    wait_for(lambda: thread_names() == before, "the threads of before the plugins")
    return gained


@pytest.mark.parametrize("auto_mtls", [False, True], ids=["plain", "automtls"])
def test_live_go_plugins_cost_the_host_two_threads_whatever_their_number(
        go_plugins: dict[str, str], in_tmp: Path, auto_mtls: bool) -> None:
    assert plugbay_threads() == []
    one = gained_by(go_plugins["kv_plugin"], 1, auto_mtls)
    ten = gained_by(go_plugins["kv_plugin"], 10, auto_mtls)
    # pipes, exits, TLS relays and broker streams all on the one shared loop thread, plus grpc.aio's
    # poller: two threads for one plugin and the same two for ten (grpcio's sync stream spent three each)
    assert kinds(one) == kinds(ten) == ["(_poll_wrapper)", "plugbay-io"], (one, ten)


def test_brokered_callbacks_to_many_go_plugins_and_a_kill9_mid_stream(
        go_plugins: dict[str, str], in_tmp: Path) -> None:
    with ExitStack() as stack:
        clients = [stack.enter_context(Client(ClientConfig(
            handshake=counter.HANDSHAKE, plugins={counter.PLUGIN_NAME: counter.CounterPlugin()},
            cmd=[go_plugins["counter_plugin"]], name=f"counter{i}"))) for i in range(3)]
        stubs = [c.dispense(counter.PLUGIN_NAME) for c in clients]
        helper = Helper()
        for i, stub in enumerate(stubs):
            stub.put(f"n{i}", 2, helper)  # the Go plugin dials the host's brokered AddHelper
            assert stub.get(f"n{i}") == 1002
        assert helper.calls == 3

        def one_of_each() -> bool:  # the stopped callback servers' workers are joined in the background
            found = kinds(thread_names())
            return all(found.count(kind) == 1 for kind in found)

        # the stream (plugbay-io, grpcio's poller) and the spare callback server started ahead of
        # time (its builder, its grpcio thread and worker) are one for the process, not one per plugin
        wait_for(one_of_each, "one thread of each kind for the three plugins")
        # a Go plugin's short GRPCStdio call starts after the first call and spins grpcio's channel
        # thread while it lasts; a sync broker stream would keep one for the stream's whole life
        wait_for(no_stdio_call, "the stdio calls to end")
        wait_for(lambda: not [n for n in thread_names() if n.endswith(SYNC_STREAM_THREAD)],
                 "no grpcio sync-stream thread (the broker streams run on grpc.aio)")
        names = thread_names()
        assert "plugbay-io" in names and "plugbay-broker-recv" not in names

        victim = clients[1]
        os.kill(int(victim.runner.id), signal.SIGKILL)
        wait_for(lambda: victim.exited, "the host to hear the kill")
        for _ in range(2):  # typed, and again (no crash, no hang)
            with pytest.raises(BrokerClosedError, match="new Client"):
                stubs[1].put("n1", 1, helper)
        with pytest.raises(BrokerClosedError, match="new Client"):
            victim.broker.dial(1, timeout=5)
        # the other plugins' brokers go on over the same loop
        for i in (0, 2):
            stubs[i].put(f"n{i}", 3, helper)
            assert stubs[i].get(f"n{i}") == 2005
        assert thread_names().count("plugbay-io") == 1
        victim.kill()
        # the two live Clients' broker streams and GRPCStdio readers (each keeps its hold on its
        # connection), and the I/O loop: the killed Client's gave theirs back
        assert aioloop.shared().users == 5
        stubs[0].put("n0", 1, helper)
        assert stubs[0].get("n0") == 3006
    assert plugbay_threads() == [] and not aioloop.shared().running


def test_the_shared_loop_runs_while_leased_and_its_last_release_joins_it() -> None:
    loop = aioloop.AioLoop("plugbay-io-test")
    first, second = loop.acquire(), loop.acquire()
    assert first.loop is second.loop and loop.running and loop.users == 2

    async def where() -> str:
        return threading.current_thread().name

    assert first.run(where()).result(10) == "plugbay-io-test"
    first.release()
    first.release()  # idempotent: it does not take the other user's share
    assert loop.running and second.run(where()).result(10) == "plugbay-io-test"
    thread = next(t for t in threading.enumerate() if t.name == "plugbay-io-test")
    second.release()
    assert not thread.is_alive() and not loop.running  # joined by the last release
    assert not second.call_soon(print)  # the loop is closed: nothing runs
    third = loop.acquire()  # a new user starts a new loop
    try:
        assert third.loop is not first.loop and third.run(where()).result(10) == "plugbay-io-test"
    finally:
        third.release()
    assert "plugbay-io-test" not in thread_names()


def test_a_stream_that_cannot_be_made_is_a_typed_error_and_gives_the_loop_back(tmp_path: Path) -> None:
    import grpc

    from plugbay.core.broker.brokertransport import BrokerTransport
    from plugbay.core.broker.stream import host_broker
    from plugbay.core.transport.secure import Redial

    channel = grpc.insecure_channel(f"unix:{tmp_path / 'nobody.sock'}")
    # credentials that are not grpc.ChannelCredentials: grpc.aio refuses to make the channel
    broker = host_broker(channel, BrokerTransport(), lazy=True,
                         redial=Redial(f"unix:{tmp_path / 'nobody.sock'}", "not credentials", ()))  # type: ignore[arg-type]
    try:
        with pytest.raises(BrokerClosedError, match="could not open the broker stream.*new Client"):
            broker.next_id()
        assert not aioloop.shared().running  # the failed opener's lease was given back
        with pytest.raises(BrokerClosedError, match="could not be opened"):  # and it stays typed
            broker.dial(1, timeout=5)
    finally:
        broker.close()
        channel.close()
    assert plugbay_threads() == []


def test_a_go_plugin_without_grpc_stdio_costs_one_second_connection(
        go_plugins: dict[str, str], in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """go-plugin 1.0.1 answers GRPCStdio with UNIMPLEMENTED; the connection that asked stays for the
    broker stream, opened later at the first dispense, instead of being closed and dialed again."""
    dials: list[str] = []
    dial = Redial.aio_channel
    monkeypatch.setattr(Redial, "aio_channel", lambda self: (dials.append(self.target), dial(self))[1])
    with Client(ClientConfig(handshake=counter.HANDSHAKE, plugins={counter.PLUGIN_NAME: counter.CounterPlugin()},
                             cmd=[go_plugins["counter_plugin"]])) as client:
        wait_for(lambda: getattr(client._stdio, "supported", None) is False, "GRPCStdio's UNIMPLEMENTED")
        stub = client.dispense(counter.PLUGIN_NAME)
        helper = Helper()
        stub.put("n", 2, helper)  # the broker stream: the plugin dials the host's AddHelper
        assert helper.calls == 1 and len(dials) == 1, dials
    assert plugbay_threads() == [] and not aioloop.shared().running
