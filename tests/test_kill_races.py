"""What a Client reports while it dies or is killed, on a loaded machine (these were flaky)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.resilience_util import PLUGIN_NAME, faulty_config, wait_until

from plugbay import Client, PluginDiedError  # noqa: I001
from plugbay.core.resilience.healthwatch import SERVING, UNREACHABLE, HealthWatcher

BUSY = "import time\nend = time.monotonic() + 90\nwhile time.monotonic() < end:\n    pass\n"
ROUNDS = 4


@pytest.fixture
def cpu_load() -> Iterator[None]:
    """Two bounded busy loops: the races show on a loaded machine."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(2)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


@pytest.mark.usefixtures("cpu_load")
def test_the_last_stderr_line_of_a_plugin_that_died_is_in_the_error(tmp_path: Path) -> None:
    for _ in range(ROUNDS):
        with Client(faulty_config(tmp_path)) as client:
            with pytest.raises(PluginDiedError, match=r"exited with code 9.*dying now"):
                client.dispense(PLUGIN_NAME).get("__die__")


def test_once_the_runner_tells_the_exit_the_stderr_tail_has_the_last_lines(tmp_path: Path) -> None:
    """The Supervisor's failure message polls runner.wait(0), which can beat the pipe follower's rest."""
    for _ in range(8):
        with Client(faulty_config(tmp_path)) as client:
            assert client.dispense(PLUGIN_NAME).get("__die_chatty__") == b"dying soon"
            assert wait_until(lambda: client.runner.wait(0) is not None, 10, step=0.0002)  # as a monitor polls
            assert client.stderr_tail()[-1:] == ["[WARNING] last words"], client.stderr_tail()


@pytest.mark.usefixtures("cpu_load")
def test_a_client_being_killed_is_reported_as_killed(tmp_path: Path) -> None:
    for _ in range(ROUNDS):
        client = Client(faulty_config(tmp_path))
        client.start()
        with HealthWatcher(client.channel, interval=0.05, timeout=1.0) as w:
            assert w.wait_for(SERVING, 20)
            client.kill()
            assert w.wait_for(UNREACHABLE, 15), w.history
            details = [h[3] for h in w.history if h[2] == UNREACHABLE]
            assert "was killed" in details[0], w.history
