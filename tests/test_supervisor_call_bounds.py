"""A Supervisor's calls keep to one call_timeout however many waits for a restart they meet.

A brokered call (the counter example's put(): an id from the broker, its AddHelper served there,
then the Put naming it) is three steps, each of which may wait for the plugin to restart; they
share one deadline.
Real plugins (the Python counter example and go-plugin's Go counter plugin), real kill -9s.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.gobuild import go_program_or_skip
from tests.procs import gone
from tests.resilience_util import wait_until

from plugbay import BrokerTimeoutError, CallTimeoutError, ClientConfig, RestartPolicy, Supervisor

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "counter"
sys.path.insert(0, str(EXAMPLE))
from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterClient, CounterPlugin  # noqa: E402

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
