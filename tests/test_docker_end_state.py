"""DockerRunner.kill(): the container's last state is kept once it stopped, whatever the removal meets.

The engine is reached through a relay (tests/engine_relay.py) that holds the container's
removal and then drops that connection and every later one: the engine went away between
the stop and the removal. diagnose() must still describe the stopped container (its exit
code), from the state kill() read after the stop, not ask the engine that is gone.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from plugbay.runners.base import LaunchSpec
from plugbay.runners.docker import DockerRunner
from tests.engine_relay import EngineRelay, relay  # noqa: F401  (relay is a fixture)

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("plugbay_docker")]

BASE = "plugbay-base:bookworm"


def test_the_final_state_survives_an_engine_lost_at_the_removal(tmp_path: Path, relay: EngineRelay,  # noqa: F811
                                                                plugbay_docker: Any) -> None:
    tag = uuid.uuid4().hex
    runner = DockerRunner(BASE, entrypoint=["python3", "-c", "import time; time.sleep(30)"])
    runner.start(LaunchSpec(env={}, labels={"plugbay.test-end": tag}))
    relay.hold("DELETE", "/containers/[0-9a-f]+")
    failed: list[BaseException] = []

    def kill() -> None:
        try:
            runner.kill(0)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            failed.append(exc)

    killer = threading.Thread(target=kill, name="plugbay-test-kill")
    killer.start()
    try:
        assert relay.holding.wait(30), "kill() never asked to remove the container"
        relay.cut()
        killer.join(30)
        assert not killer.is_alive()
        assert runner.wait(10) is not None  # it did stop before the engine went away
        described = runner.diagnose()  # from the state kept at the stop: the engine is not asked
        assert f"container {runner.id[:12]} ({BASE}): state exited, exit code 137" in described, described
    finally:
        for found in plugbay_docker.containers.list(all=True, filters={"label": f"plugbay.test-end={tag}"}):
            found.remove(force=True, v=True)
