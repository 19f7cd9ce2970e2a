"""A future() call of a Supervisor stub waiting for a restart, cancelled, frees its thread at once (before
its done callbacks run), and one the Supervisor's stop() ends ends at once. The Python counter example,
real kill -9s.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.procs import gone
from tests.resilience_util import wait_until

from plugbay import (ClientConfig, ClientStateError, PlugbayError, RestartPolicy,
                     Supervisor)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "counter"
sys.path.insert(0, str(EXAMPLE))
from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin  # noqa: E402
from counterproto import counter_pb2  # noqa: E402

QUICK = RestartPolicy(max_restarts=10, window=120, initial_backoff=0.01, max_backoff=0.01)


class Adder:
    def sum(self, a: int, b: int) -> int:
        return a + b


def kill_current(sup: Supervisor) -> None:
    client = sup.current_client
    assert client is not None and client.runner.pid is not None
    pid = client.runner.pid
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: gone(pid), 10)


class Waiting:
    """A Supervisor whose plugin was killed and whose restart is held (until ``release``), and a Get
    future() of it whose thread waits for that restart."""

    def __init__(self, sup: Supervisor, counter: Any, future: Any, release: threading.Event) -> None:
        self.sup, self.counter, self.future, self.release = sup, counter, future, release


@contextmanager
def a_future_waiting_for_a_restart(key: str) -> Iterator[Waiting]:
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
            counter.put(key, 1, Adder())
            kill_current(sup)
            assert wait_until(lambda: sup.state == "restarting" and len(starts) > 1, 30)
            assert call_threads() == []
            future = counter._stub.Get.future(counter_pb2.GetRequest(key=key))
            assert wait_until(lambda: len(call_threads()) == 1, 10)  # its thread waits for the restart
            yield Waiting(sup, counter, future, release)
    finally:
        release.set()


def call_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("plugbay-call-")]


def test_a_cancelled_future_waiting_for_a_restart_frees_its_thread_at_once(in_tmp: Path) -> None:
    with a_future_waiting_for_a_restart("c") as waiting:
        future = waiting.future
        assert future.cancel() and future.cancelled()
        # the call_timeout is 30 s: its thread ends now, not then (15 s: a bound a loaded machine meets)
        assert wait_until(lambda: call_threads() == [], 15), call_threads()
        with pytest.raises(Exception) as err:
            future.result(0)
        assert not isinstance(err.value, PlugbayError)  # grpc.FutureCancelledError, as gRPC's own
        waiting.release.set()
        assert waiting.sup.wait_running(30)
        waiting.counter.put("c", 2, Adder())  # the restarted plugin serves calls (it kept the count in its file)
        assert waiting.counter.get("c") == 3


def test_a_future_waiting_for_a_restart_ends_at_once_when_the_supervisor_is_stopped(in_tmp: Path) -> None:
    with a_future_waiting_for_a_restart("s") as waiting:
        waiting.release.set()  # the held restart ends once stop() asked it to
        waiting.sup.stop()
        with pytest.raises(ClientStateError, match="was stopped"):
            waiting.future.result(15)  # not the 30 s call_timeout
        assert wait_until(lambda: call_threads() == [], 15), call_threads()


def test_a_done_callback_of_a_cancelled_future_sees_its_thread_already_told_to_stop(in_tmp: Path) -> None:
    # A done callback runs inside cancel(): the layer the call waits in (the ready gate) must have been told
    # before it, or a callback that waits for the call's end waits out the call_timeout (30 s here).
    seen: list[bool] = []
    with a_future_waiting_for_a_restart("d") as waiting:
        waiting.future.add_done_callback(lambda f: seen.append(f.cancelled() and wait_until(
            lambda: call_threads() == [], 15)))
        assert waiting.future.cancel()
        assert seen == [True], "the call's thread still waited when its done callback ran"
        waiting.release.set()
        assert waiting.sup.wait_running(30)
