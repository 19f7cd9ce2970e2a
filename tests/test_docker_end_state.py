"""DockerRunner.kill(): the container's last state is kept once it stopped, whatever the removal meets.

The engine is reached through a relay (tests/engine_relay.py) that holds the container's
removal and then drops that connection and every later one: the engine went away between
the stop and the removal. diagnose() must still describe the stopped container (its exit
code), from the state kill() read after the stop, not ask the engine that is gone.
"""

from __future__ import annotations

import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from plugbay.core.host.client import Client, ClientConfig
from plugbay.errors import PluginDiedError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.docker import DockerRunner
from plugbay.runners.docker.madehere import forget_made
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
            forget_made(found.id)  # kept by kill() while the container it could not remove may exist


def test_a_hung_engine_holds_no_call_behind_another_ones_exit_reason(plugbay_image: Any, relay: EngineRelay,  # noqa: F811
                                                                     plugbay_docker: Any) -> None:
    # A container killed with code 137 (an OOM kill or a docker kill): a call's error asks the engine once
    # why (State.OOMKilled). That inspect ran under the ManagedChannel's lock, so with the engine hung every
    # other call waited behind it for all of engine_timeout (review42 hung_reason.py: 4.0 s each).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "kv"))
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin

    runner = DockerRunner(plugbay_image("kv"), transport="unix", writable_dirs=("/tmp", "/data"), engine_timeout=30)
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner))
    try:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("a", b"1")
        plugbay_docker.api.kill(runner.id)
        assert runner.wait(20) == 137
        # the log followers ask the engine at the log's end whether the container still runs: let them,
        # so the request held next is the exit reason's
        names = {f"plugbay-docker-{which}-{runner.id[:12]}" for which in ("stdout", "stderr")}
        for follower in [t for t in threading.enumerate() if t.name in names]:
            follower.join(30)
        relay.hold("GET", "/containers/[0-9a-f]+/json")  # the exit reason's inspect hangs
        ended: list[str] = []

        def call(who: str) -> None:
            with pytest.raises(PluginDiedError, match="exited with code 137"):
                kv.get("a")
            ended.append(who)

        first = threading.Thread(target=call, args=("first",), name="plugbay-test-first-call")
        first.start()
        try:
            assert relay.holding.wait(30), "the first call's error never asked the engine"
            call("second")  # its own ask is not held: it must not wait for the first one's
            first.join(60)
        finally:
            relay.release()
            first.join(60)
        assert ended == ["second", "first"]
    finally:
        client.kill()
