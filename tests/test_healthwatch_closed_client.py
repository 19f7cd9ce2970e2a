"""A HealthWatcher whose Client is gone for good (killed, closed, its plugin exited, its Supervisor stopped)
ends its plugbay-health-* thread by itself (it polled a dead channel until stop()); one on a Supervisor's
channel keeps watching through a restart, and one given a function keeps asking it. Real plugins."""

from __future__ import annotations

import math
import os
import signal
import threading
from pathlib import Path

import pytest

from tests.resilience_util import faulty_config, wait_until

from plugbay import Client, HealthWatcher, RestartPolicy, Supervisor
from plugbay.core.resilience.healthwatch import SERVING, UNREACHABLE

MODES = ["watch", "check"]


def _alive(name: str) -> bool:
    return any(t.name == f"plugbay-health-{name}" for t in threading.enumerate())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("how", ["kill", "sigkill"])
def test_the_watcher_of_a_client_gone_for_good_ends_by_itself(tmp_path: Path, mode: str, how: str) -> None:
    name = f"gone-{mode}-{how}"
    changes: list[str] = []
    with Client(faulty_config(tmp_path)) as client:
        w = HealthWatcher(client.channel, interval=0.2, timeout=1.0, mode=mode, name=name,
                          on_change=lambda old, new, why: changes.append(new)).start()
        try:
            assert w.wait_for(SERVING, 10)
            if how == "kill":
                client.kill()
            else:
                os.kill(client.runner.pid, signal.SIGKILL)
            assert wait_until(lambda: not _alive(name), 30), "the health thread polls a closed channel"
            assert w.state == UNREACHABLE and "closed for good" in w.detail, w.detail
            assert changes[-1] == UNREACHABLE  # told, before it ended
            assert w.wait_for(SERVING, math.inf) is False  # returns: nothing will change any more
        finally:
            w.stop()


@pytest.mark.parametrize("mode", MODES)
def test_a_watcher_on_a_supervisors_channel_watches_through_a_restart_and_ends_at_stop(
        tmp_path: Path, mode: str) -> None:
    name = f"sup-{mode}"
    sup = Supervisor(lambda: faulty_config(tmp_path), restart=RestartPolicy(initial_backoff=0.05),
                     health_interval=None)
    with sup:
        w = HealthWatcher(sup.channel, interval=0.2, timeout=1.0, mode=mode, name=name).start()
        try:
            assert w.wait_for(SERVING, 10)
            client = sup.current_client
            assert client is not None
            os.kill(client.runner.pid, signal.SIGKILL)
            assert wait_until(lambda: sup.restarts == 1 and sup.state == "running", 30)
            assert w.wait_for(SERVING, 30) and _alive(name)  # the restart did not end it
        except BaseException:
            w.stop()
            raise
    assert wait_until(lambda: not _alive(name), 30)  # the Supervisor's stop did
    assert "closed for good" in w.detail
    # its advice is the Supervisor's: its Client's own (start a new Client) is no use to a Supervisor's user
    assert "Supervisor" in w.detail and "start a new Client" not in w.detail, w.detail


def test_a_watcher_given_a_function_keeps_asking_it(tmp_path: Path) -> None:
    clients = [Client(faulty_config(tmp_path)), Client(faulty_config(tmp_path))]
    current = clients[0]
    try:
        clients[0].start()
        w = HealthWatcher(lambda: current.channel, interval=0.2, timeout=1.0, name="fn").start()
        try:
            assert w.wait_for(SERVING, 10)
            clients[0].kill()
            assert w.wait_for(UNREACHABLE, 30) and _alive("fn")
            clients[1].start()
            current = clients[1]
            assert w.wait_for(SERVING, 30)  # the function's next channel is watched
        finally:
            w.stop()
    finally:
        for c in clients:
            c.kill()
