"""Brokered callbacks under a Supervisor and an AsyncSupervisor: the counter example's stub (its Put
serves the host's AddHelper through the GRPCBroker) keeps working across kill -9 and restarts, with
the Python counter plugin and go-plugin's own Go counter plugin."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.gobuild import go_program_or_skip
from tests.procs import gone
from tests.resilience_util import wait_until

from plugbay import (AsyncSupervisor, BrokerClosedError, ClientConfig, ClientStateError, PluginDiedError,
                     RestartPolicy, Supervisor)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "counter"
sys.path.insert(0, str(EXAMPLE))
from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin, _helper_servicer  # noqa: E402
from counterproto import counter_pb2, counter_pb2_grpc  # noqa: E402

FAST = RestartPolicy(max_restarts=3, window=120, initial_backoff=0.05, max_backoff=0.2)


class Adder:
    """The host's AddHelper; the calls it got prove the plugin called back into this host."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def sum(self, a: int, b: int) -> int:
        self.calls.append((a, b))
        return a + b


class AsyncAdder(Adder):
    async def sum(self, a: int, b: int) -> int:  # type: ignore[override]
        self.calls.append((a, b))
        return a + b


@pytest.fixture(params=["python", "go"])
def plugin_cmd(request: pytest.FixtureRequest) -> list[str]:
    if request.param == "go":
        return [str(go_program_or_skip("counter_plugin"))]
    return [sys.executable, str(EXAMPLE / "plugin.py")]


def counter_config(cmd: list[str]) -> ClientConfig:
    return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()}, cmd=cmd, name="counter")


def kill_current(sup: Supervisor) -> int:
    client = sup.current_client
    assert client is not None
    pid = client.runner.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: gone(pid), 10)
    return pid


def test_a_brokered_stub_keeps_working_after_the_plugin_is_killed_and_restarted(
        plugin_cmd: list[str], in_tmp: Path) -> None:
    adder = Adder()
    with Supervisor(lambda: counter_config(plugin_cmd), restart=FAST, health_interval=None) as sup:
        counter = sup.dispense(PLUGIN_NAME)
        counter.put("n", 2, adder)
        assert counter.get("n") == 2
        first = kill_current(sup)
        assert sup.wait_running(30)
        assert sup.dispense(PLUGIN_NAME) is counter
        counter.put("n", 3, adder)  # the same stub: its callback is served on the new plugin's broker
        assert counter.get("n") == 5
        kill_current(sup)  # and again, for a second successor
        assert sup.wait_running(30)
        counter.put("n", 4, adder)
        assert counter.get("n") == 9
        assert sup.restarts == 2 and sup.current_client is not None and sup.current_client.runner.pid != first
    assert adder.calls == [(0, 2), (2, 3), (5, 4)]


def test_a_plugin_killed_during_its_callback_fails_that_put_typed_and_the_next_one_works(in_tmp: Path) -> None:
    class KillingAdder(Adder):
        def __init__(self, sup: Supervisor) -> None:
            super().__init__()
            self.sup = sup

        def sum(self, a: int, b: int) -> int:
            if not self.calls:  # the plugin dies while its Put waits for this callback
                kill_current(self.sup)
            return super().sum(a, b)

    with Supervisor(lambda: counter_config([sys.executable, str(EXAMPLE / "plugin.py")]), restart=FAST,
                    health_interval=None) as sup:
        counter = sup.dispense(PLUGIN_NAME)
        adder = KillingAdder(sup)
        with pytest.raises(PluginDiedError):
            counter.put("d", 1, adder)  # in flight when the plugin died: not resent
        counter.put("d", 2, adder)  # its brokered server on the dead plugin's broker is gone; this one serves anew
        assert counter.get("d") == 2
        assert adder.calls == [(0, 1), (0, 2)] and sup.restarts == 1


def test_a_brokered_call_made_while_the_plugin_restarts_waits_for_it(in_tmp: Path) -> None:
    entered, release = threading.Event(), threading.Event()
    starts: list[int] = []

    def config() -> ClientConfig:
        starts.append(1)
        if len(starts) > 1:  # the restart: held until the test lets it go on
            entered.set()
            assert release.wait(30)
        return counter_config([sys.executable, str(EXAMPLE / "plugin.py")])

    adder = Adder()
    with Supervisor(config, restart=FAST, health_interval=None) as sup:
        counter = sup.dispense(PLUGIN_NAME)
        counter.put("w", 1, adder)
        kill_current(sup)
        assert entered.wait(30) and sup.state == "restarting"
        threading.Timer(0.3, release.set).start()
        counter.put("w", 10, adder)  # waits for the restarted plugin instead of failing
        assert counter.get("w") == 11 and sup.restarts == 1
    assert adder.calls == [(0, 1), (1, 10)]


def test_the_supervisors_broker_after_stop_refuses_typed(in_tmp: Path) -> None:
    with Supervisor(lambda: counter_config([sys.executable, str(EXAMPLE / "plugin.py")]), restart=FAST,
                    health_interval=None) as sup:
        counter = sup.dispense(PLUGIN_NAME)
        counter.put("s", 1, Adder())
    with pytest.raises(ClientStateError, match="was stopped; make a new one"):
        counter.put("s", 1, Adder())
    assert sup.broker.closed


def test_an_async_brokered_stub_keeps_working_after_the_plugin_is_killed_and_restarted(
        plugin_cmd: list[str], in_tmp: Path) -> None:
    adder = AsyncAdder()

    async def main() -> None:
        async with AsyncSupervisor(lambda: counter_config(plugin_cmd), restart=FAST, health_interval=None) as sup:
            counter = await sup.dispense(PLUGIN_NAME)
            await counter.put("a", 2, adder)
            assert await counter.get("a") == 2
            await asyncio.to_thread(kill_current, sup.sync_supervisor)
            # on the loop the stub's broker does not wait for a restart (see the next test): let it begin
            assert await asyncio.to_thread(wait_until, lambda: sup.sync_supervisor.restarts == 1, 30)
            assert await sup.wait_running(30)
            assert await sup.dispense(PLUGIN_NAME) is counter
            await counter.put("a", 3, adder)
            assert await counter.get("a") == 5
            assert sup.sync_supervisor.restarts == 1

    asyncio.run(main())
    assert adder.calls == [(0, 2), (2, 3)]


def test_an_async_brokered_call_on_the_loop_during_a_restart_fails_typed_without_blocking_it(
        in_tmp: Path) -> None:
    entered, release = threading.Event(), threading.Event()
    starts: list[int] = []

    def config() -> ClientConfig:
        starts.append(1)
        if len(starts) > 1:
            entered.set()
            assert release.wait(30)
        return counter_config([sys.executable, str(EXAMPLE / "plugin.py")])

    async def main() -> Any:
        async with AsyncSupervisor(config, restart=FAST, health_interval=None) as sup:
            counter = await sup.dispense(PLUGIN_NAME)
            await counter.put("r", 1, AsyncAdder())
            await asyncio.to_thread(kill_current, sup.sync_supervisor)
            assert await asyncio.to_thread(entered.wait, 30)
            # the stub asks the broker for an id on the event loop: it must not block the loop
            # waiting for the restart, so it says why it cannot broker now
            with pytest.raises(BrokerClosedError, match="being restarted") as err:
                await counter.put("r", 5, AsyncAdder())
            assert "start a new Client" not in str(err.value)
            release.set()
            assert await sup.wait_running(30)
            await counter.put("r", 5, AsyncAdder())
            assert await counter.get("r") == 6

    try:
        asyncio.run(main())
    finally:
        release.set()


def test_a_callback_served_just_before_the_plugin_died_is_served_again_for_the_successor(
        plugin_cmd: list[str], in_tmp: Path) -> None:
    # CounterClient.put's own steps, with the death placed between serving the callback and the Put:
    # the Put goes to the successor, which must find the id on its own broker
    adder = Adder()
    with Supervisor(lambda: counter_config(plugin_cmd), restart=FAST, health_interval=None) as sup:
        sup.dispense(PLUGIN_NAME).put("f", 1, adder)
        broker, stub = sup.broker, counter_pb2_grpc.CounterStub(sup.channel)
        sid = broker.next_id()
        servicer = _helper_servicer(adder)
        broker.accept_and_serve(sid, lambda server: counter_pb2_grpc.add_AddHelperServicer_to_server(servicer, server))
        kill_current(sup)
        try:
            stub.Put(counter_pb2.PutRequest(add_server=sid, key="f", value=2))
        finally:
            broker.stop_serving(sid)
        assert sup.restarts == 1 and adder.calls == [(0, 1), (1, 2)]
        assert stub.Get(counter_pb2.GetRequest(key="f")).value == 3
        assert broker._live == {}  # stopped on every broker that served it


def test_an_async_put_right_after_a_death_works_once_wait_running_says_so(in_tmp: Path) -> None:
    # the BrokerClosedError's advice (await wait_running(), call again) must hold before the monitor saw the death
    adder = AsyncAdder()

    async def main() -> None:
        async with AsyncSupervisor(lambda: counter_config([sys.executable, str(EXAMPLE / "plugin.py")]),
                                   restart=FAST, health_interval=None) as sup:
            counter = await sup.dispense(PLUGIN_NAME)
            await counter.put("k", 1, adder)
            for _ in range(2):
                await asyncio.to_thread(kill_current, sup.sync_supervisor)
                assert await sup.wait_running(30)
                await counter.put("k", 1, adder)
            assert await counter.get("k") == 3 and sup.sync_supervisor.restarts == 2

    asyncio.run(main())


def test_ids_handed_out_and_never_served_are_not_kept(in_tmp: Path) -> None:
    with Supervisor(lambda: counter_config([sys.executable, str(EXAMPLE / "plugin.py")]), restart=FAST,
                    health_interval=None) as sup:
        ids = [sup.broker.next_id() for _ in range(2000)]
        assert len(set(ids)) == len(ids) and sup.broker._live == {}
        kill_current(sup)
        assert sup.wait_running(30)
        later = sup.broker.next_id()  # the new broker counts from 1 again; these do not
        assert later > max(ids) and sup.broker._live == {}
