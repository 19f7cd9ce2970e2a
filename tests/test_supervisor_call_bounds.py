"""A Supervisor's calls keep to one call_timeout however many waits for a restart they meet.

A brokered call (the counter example's put(): an id from the broker, its AddHelper served there,
then the Put naming it) is three steps, each of which may wait for the plugin to restart; they
share one deadline. A future() call waiting for a restart and cancelled frees its thread at once.
Real plugins (the Python counter example and go-plugin's Go counter plugin), real kill -9s.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.gobuild import go_program_or_skip
from tests.procs import gone
from tests.resilience_util import wait_until

from plugbay import (BrokerTimeoutError, CallTimeoutError, ClientConfig, ClientStateError, PlugbayError, RestartPolicy,
                     Supervisor)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "counter"
sys.path.insert(0, str(EXAMPLE))
from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterClient, CounterPlugin  # noqa: E402
from counterproto import counter_pb2  # noqa: E402

QUICK = RestartPolicy(max_restarts=10, window=120, initial_backoff=0.01, max_backoff=0.01)
MARGIN = 1.0  # the bound's slack: the steps' own work once the deadline is reached


class Adder:
    def sum(self, a: int, b: int) -> int:
        return a + b


@pytest.fixture(params=["python", "go"])
def plugin_cmd(request: pytest.FixtureRequest) -> list[str]:
    if request.param == "go":
        return [str(go_program_or_skip("counter_plugin"))]
    return [sys.executable, str(EXAMPLE / "plugin.py")]


def slow_restarts(cmd: list[str], call_timeout: float, restart_takes: float) -> Any:
    """A config source whose every restart takes ``restart_takes`` seconds before the plugin starts."""
    starts: list[int] = []

    def config() -> ClientConfig:
        starts.append(1)
        if len(starts) > 1:
            time.sleep(restart_takes)
        return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()}, cmd=cmd, name="counter",
                            call_timeout=call_timeout)
    return config


def kill_current(sup: Supervisor) -> None:
    client = sup.current_client
    assert client is not None and client.runner.pid is not None
    pid = client.runner.pid
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: gone(pid), 10)


class KillingBroker:
    """The Supervisor's broker, with the plugin killed right after each step of a brokered call used it:
    every step, and the Put, then meets a dead plugin and waits for the next restart."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def next_id(self) -> int:
        id = self.sup.broker.next_id()
        kill_current(self.sup)
        return id

    def accept_and_serve(self, id: int, register: Any, **kw: Any) -> None:
        self.sup.broker.accept_and_serve(id, register, **kw)
        kill_current(self.sup)

    def stop_serving(self, id: int) -> None:
        self.sup.broker.stop_serving(id)


def test_a_brokered_put_meeting_a_death_at_each_step_ends_within_one_call_timeout(
        plugin_cmd: list[str], in_tmp: Path) -> None:
    timeout = 3.0
    # each restart takes most of a call_timeout: one wait fits in it, two did not
    with Supervisor(slow_restarts(plugin_cmd, timeout, 2.0), restart=QUICK, health_interval=None) as sup:
        sup.dispense(PLUGIN_NAME).put("n", 1, Adder())
        counter = CounterClient(KillingBroker(sup), sup.channel)  # type: ignore[arg-type]
        kill_current(sup)  # dead right before the put, and again after each of its steps
        began = time.monotonic()
        try:
            counter.put("n", 2, Adder())
            outcome = "succeeded"
        except (BrokerTimeoutError, CallTimeoutError) as exc:  # typed: it waited for a restart in vain
            outcome = type(exc).__name__
        took = time.monotonic() - began
        assert took < timeout + MARGIN, f"the put took {took:.1f}s with call_timeout={timeout}s ({outcome})"
        assert sup.wait_running(30)
        stub = sup.dispense(PLUGIN_NAME)
        before = stub.get("n")  # the counter plugin keeps its counts in files: 1, or 3 had the Put got there
        stub.put("n", 3, Adder())  # and the next call works on the restarted plugin
        assert stub.get("n") == before + 3


def test_a_dial_after_a_wait_for_a_restart_keeps_to_the_call_timeout(in_tmp: Path) -> None:
    timeout = 2.5
    cmd = [sys.executable, str(EXAMPLE / "plugin.py")]
    with Supervisor(slow_restarts(cmd, timeout, 0.5), restart=QUICK, health_interval=None) as sup:
        kill_current(sup)
        began = time.monotonic()
        # the id was the dead plugin's: the successor never announces it (go-plugin's dial waits 5 s)
        with pytest.raises(BrokerTimeoutError):
            sup.broker.dial(4242)
        took = time.monotonic() - began
        assert took < timeout + MARGIN, f"the dial took {took:.1f}s with call_timeout={timeout}s"


def call_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("plugbay-call-")]


def test_a_cancelled_future_waiting_for_a_restart_frees_its_thread_at_once(in_tmp: Path) -> None:
    release = threading.Event()
    starts: list[int] = []

    def config() -> ClientConfig:
        starts.append(1)
        if len(starts) > 1:  # the restart is held until the test lets it go on
            assert release.wait(60)
        return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                            cmd=[sys.executable, str(EXAMPLE / "plugin.py")], name="counter", call_timeout=30.0)

    try:
        with Supervisor(config, restart=QUICK, health_interval=None) as sup:
            counter = sup.dispense(PLUGIN_NAME)
            counter.put("c", 1, Adder())
            kill_current(sup)
            assert wait_until(lambda: sup.state == "restarting" and len(starts) > 1, 30)
            assert call_threads() == []
            future = counter._stub.Get.future(counter_pb2.GetRequest(key="c"))
            assert wait_until(lambda: len(call_threads()) == 1, 10)  # its thread waits for the restart
            assert future.cancel() and future.cancelled()
            # the call_timeout is 30 s: its thread ends now, not then
            assert wait_until(lambda: call_threads() == [], 2), call_threads()
            with pytest.raises(Exception) as err:
                future.result(0)
            assert not isinstance(err.value, PlugbayError)  # grpc.FutureCancelledError, as gRPC's own
            release.set()
            assert sup.wait_running(30)
            counter.put("c", 2, Adder())  # the restarted plugin serves calls (it kept the count in its file)
            assert counter.get("c") == 3
    finally:
        release.set()


def test_a_future_waiting_for_a_restart_ends_at_once_when_the_supervisor_is_stopped(in_tmp: Path) -> None:
    release = threading.Event()
    starts: list[int] = []

    def config() -> ClientConfig:
        starts.append(1)
        if len(starts) > 1:
            assert release.wait(60)
        return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                            cmd=[sys.executable, str(EXAMPLE / "plugin.py")], name="counter", call_timeout=30.0)

    try:
        sup = Supervisor(config, restart=QUICK, health_interval=None)
        with sup:
            counter = sup.dispense(PLUGIN_NAME)
            counter.put("s", 1, Adder())
            kill_current(sup)
            assert wait_until(lambda: sup.state == "restarting" and len(starts) > 1, 30)
            future = counter._stub.Get.future(counter_pb2.GetRequest(key="s"))
            assert wait_until(lambda: len(call_threads()) == 1, 10)
            release.set()  # the held restart ends once stop() asked it to
            sup.stop()
            with pytest.raises(ClientStateError, match="was stopped"):
                future.result(5)  # not the 30 s call_timeout
            assert wait_until(lambda: call_threads() == [], 2), call_threads()
    finally:
        release.set()
