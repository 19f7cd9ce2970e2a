"""A graceful kill (Shutdown first) ends the plugin's own daemon as the force path does.

The KV example plugin starts a daemon of its own in its own session with an environment of its
own (no plugbay marker), as a plugin that owns a server would. Shutdown makes the plugin exit, and
its daemon then points back to nothing of the plugin's: the runner notes the plugin's descendants
before Shutdown is asked (record_descendants), for launched and reattached plugins alike.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.resilience_util import HANDSHAKE, KV_EXAMPLE, PLUGIN_NAME, PLUGINS, PY, faulty_config, wait_until

from plugbay import Client, ClientConfig  # noqa: I001
from plugbay.runners.base import LaunchSpec
from plugbay.runners.process import ProcessRunner
from plugbay.runners.proctree import stat_of

# The daemon's pid goes to a file in the plugin's folder; then the plugin serves as the KV example.
DAEMONIZING_KV = (
    "import os, runpy, subprocess, sys\n"
    "p = subprocess.Popen(['sleep', '120'], start_new_session=True, env={'PATH': os.environ['PATH']},\n"
    "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "open('daemon.pid.tmp', 'w').write(str(p.pid)); os.replace('daemon.pid.tmp', 'daemon.pid')\n"
    f"sys.argv = [{KV_EXAMPLE!r}]\n"
    f"sys.path.insert(0, {os.path.dirname(KV_EXAMPLE)!r})\n"
    f"runpy.run_path({KV_EXAMPLE!r}, run_name='__main__')\n")


@pytest.fixture
def daemons() -> Iterator[list[tuple[int, int]]]:
    """(pid, start ticks) of the daemons a test saw: any still running at the end are ended."""
    seen: list[tuple[int, int]] = []
    yield seen
    for pid, start in seen:
        facts = stat_of(pid)
        if facts is not None and facts[1] == start:
            os.kill(pid, signal.SIGKILL)


def _daemon(folder: Path, seen: list[tuple[int, int]]) -> tuple[int, int]:
    path = folder / "daemon.pid"
    assert wait_until(path.exists, 20), "the plugin never started its daemon"
    pid = int(path.read_text())
    facts = stat_of(pid)
    assert facts is not None, "the daemon is not running"
    seen.append((pid, facts[1]))
    return pid, facts[1]


def _gone(pid: int, start: int) -> bool:
    facts = stat_of(pid)
    return facts is None or facts[1] != start


def test_client_kill_after_shutdown_ends_the_plugins_own_daemon(tmp_path: Path,
                                                                 daemons: list[tuple[int, int]]) -> None:
    client = Client(faulty_config(tmp_path, cmd=[PY, "-c", DAEMONIZING_KV]))
    try:
        client.start()
        client.dispense(PLUGIN_NAME).put("k", b"v")  # it serves: Shutdown will be asked and obeyed
        pid, start = _daemon(tmp_path, daemons)
        assert os.getsid(pid) == pid != os.getsid(client.runner.pid)
    finally:
        client.kill()
    assert client.runner.wait(5) == 0, "the plugin did not exit by Shutdown (the graceful path was not taken)"
    assert wait_until(lambda: _gone(pid, start), 5), "the plugin's daemon outlived Client.kill()"


def test_a_reattached_client_kill_ends_the_plugins_own_daemon(tmp_path: Path,
                                                              daemons: list[tuple[int, int]]) -> None:
    first = Client(faulty_config(tmp_path, cmd=[PY, "-c", DAEMONIZING_KV]))
    try:
        first.start()
        pid, start = _daemon(tmp_path, daemons)
        second = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, reattach=first.reattach_config()))
        second.start()
        second.dispense(PLUGIN_NAME).put("k", b"v")
        second.kill()
        assert wait_until(lambda: first.runner.wait(0) is not None, 10)
        assert first.runner.wait(0) == 0, "the plugin did not exit by Shutdown (the graceful path was not taken)"
        assert wait_until(lambda: _gone(pid, start), 5), "the plugin's daemon outlived the reattached kill()"
    finally:
        first.kill()


def test_a_recorded_pid_that_names_another_process_now_is_left_alone() -> None:
    runner = ProcessRunner(["sleep", "60"])
    runner.start(LaunchSpec(env={}))
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        runner.record_descendants()
        facts = stat_of(bystander.pid)
        assert facts is not None
        # as if a recorded descendant had ended and its pid gone to the bystander: other start ticks
        runner._recorded[bystander.pid] = facts[1] - 1
        runner.kill(0)
        assert bystander.poll() is None, "kill() signalled a recorded pid that names another process now"
    finally:
        runner.kill(0)
        bystander.kill()
        bystander.wait(10)
