"""What a Client reports while it dies or is killed, on a loaded machine (these were flaky)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from tests.resilience_util import FAULTY, PLUGIN_NAME, PY, faulty_config, wait_until

from plugbay import Client, PluginDiedError  # noqa: I001
from plugbay.core.host.logs import LogPump
from plugbay.core.resilience.healthwatch import SERVING, UNREACHABLE, HealthWatcher
from plugbay.core.transport import ioloop

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


def test_the_stderr_tail_asked_on_the_shared_loop_does_not_wait_there_for_the_streams(tmp_path: Path) -> None:
    """A log handler (on plugbay-io) may ask for the tail: only that loop ends the pump's streams, so a
    wait there can only run out, stalling every plugin's I/O. Here a child keeps stderr open (it never ends)."""
    keeper = ["sh", "-c", f'sleep 30 & exec "{PY}" "{FAULTY}"']  # the sleep holds the pipes past the exit
    with Client(faulty_config(tmp_path, cmd=keeper)) as client:
        assert client.dispense(PLUGIN_NAME).get("__die_chatty__") == b"dying soon"
        assert wait_until(lambda: client.runner.wait(0) is not None, 10)  # ended; its pipes did not
        waits: list[object] = []
        done = threading.Event()

        def trace(frame: FrameType, event: str, arg: object) -> object:
            if event == "call" and frame.f_code is LogPump.join.__code__:
                waits.append(frame.f_locals.get("timeout"))
            return None

        def ask() -> None:
            sys.settrace(trace)
            try:
                client.stderr_tail()
            finally:
                sys.settrace(None)
                done.set()

        ioloop.shared().call_soon(ask)
        assert done.wait(30)
        assert waits == []  # the loop thread never sat out LogPump.join
        assert client.stderr_tail()[-1:] == ["[WARNING] last words"]  # off the loop: drained as before


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
