"""The pytest plugin's fixtures kill every plugin they started at teardown: a Ctrl-C (a real SIGINT) inside one
kill() still lets the others be killed, and comes out of the teardown once they are.

The plugins are real processes (the KV example); the SIGINT is sent to this process as the chosen client's
kill() is entered (a profile hook on this thread), so the KeyboardInterrupt is raised inside it.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import Client, ClientConfig, ProcessRunner  # noqa: E402
from plugbay.testing.pytest_plugin import _Started  # noqa: E402
from tests.procs import gone  # noqa: E402

KV = [sys.executable, str(REPO / "examples" / "kv" / "plugin.py")]


@pytest.mark.timeout(120)
def test_ctrl_c_in_one_kill_still_kills_every_other_plugin() -> None:
    started = _Started()
    clients: list[Client] = []
    try:
        for _ in range(3):
            clients.append(started.start(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                                                      cmd=list(KV), start_timeout=60)))
        runners = [client.runner for client in clients]
        assert all(isinstance(runner, ProcessRunner) for runner in runners)
        pids = [runner.pid for runner in runners if isinstance(runner, ProcessRunner)]
        assert all(isinstance(pid, int) and not gone(pid) for pid in pids)
        interrupted = clients[1]  # close() kills the last started first: one is killed before it, one after
        armed = [True]

        def profile(frame: FrameType, event: str, arg: Any) -> None:
            if (armed[0] and event == "call" and frame.f_code.co_name == "kill"
                    and frame.f_locals.get("self") is interrupted):
                armed[0] = False
                os.kill(os.getpid(), signal.SIGINT)

        sys.setprofile(profile)
        try:
            with pytest.raises(KeyboardInterrupt):
                started.close()
        finally:
            sys.setprofile(None)
        assert not armed[0], "close() never reached the interrupted client's kill()"
        assert pids[0] is not None and pids[2] is not None
        assert gone(pids[0]) and gone(pids[2]), "a Ctrl-C in one kill() left the other plugins running"
        assert started.clients == []
    finally:
        for client in clients:
            client.kill()
    assert all(gone(pid) for pid in pids if pid is not None)
