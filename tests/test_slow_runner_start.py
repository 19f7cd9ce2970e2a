"""A slow engine: a runner.start() that uses up start_timeout is named as such, not blamed on the plugin;
a create whose answer never comes (Ctrl-C, the SDK's timeout) leaves no container behind.

The engine is reached through tests/engine_relay.py, which holds the container create
for longer than the Client's start_timeout: the plugin never had time to print its
handshake line, and the error must say where the time went. Or it passes the create on
and holds the engine's answer: the engine made the container, the runner has no id.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from plugbay.core.host.client import Client, ClientConfig
from plugbay.errors import EngineUnavailableError, HandshakeTimeoutError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.docker import DockerRunner
from tests.engine_relay import EngineRelay, relay  # noqa: F401  (relay is a fixture)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("plugbay_docker")]


def test_a_slow_container_create_is_named_in_the_timeout(relay: EngineRelay, plugbay_image: Any,  # noqa: F811
                                                        plugbay_docker: Any) -> None:
    tag = uuid.uuid4().hex
    # tcp: the unix transport's socket folder goes with the failed start, and a create the engine sees after
    # that is refused (its bind source is missing); one that saw it before makes the container all the same
    runner = DockerRunner(plugbay_image("kv"), writable_dirs=("/tmp", "/data"), labels={"test.plugbay-slow": tag},
                          transport="tcp")
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner,
                                 start_timeout=3))
    relay.hold("POST", "/containers/create")
    # the engine gets the create only after the start gave up on it (start_timeout) and looked for it by name
    releaser = threading.Timer(4.5, relay.release)
    releaser.start()
    try:
        # the runner's own start ends at the Client's deadline (LaunchSpec.deadline), naming the request
        with pytest.raises(HandshakeTimeoutError, match=r"start_timeout ran out while it asked the Docker engine"
                                                        r" .* to create the container"):
            client.start()
        # the engine made the container all the same, and it stayed behind in Created state: the failed
        # start's clean-up (the Client's kill, as a with block's exit) waits for it and removes it
        assert relay.answered.wait(30) and " 201 " in relay.answer_line, relay.answer_line
        assert _left(plugbay_docker, tag) == []
    finally:
        releaser.cancel()
        relay.release()
        client.kill()
        for found in plugbay_docker.containers.list(all=True, filters={"label": f"test.plugbay-slow={tag}"}):
            found.remove(force=True, v=True)  # only when the test failed: the product removes it


_GIVES_UP_AND_EXITS = """
import sys, time
from plugbay.errors import HandshakeTimeoutError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.docker import DockerRunner

runner = DockerRunner("plugbay-base:bookworm", entrypoint=["sleep", "60"], transport="tcp",
                      labels={"test.plugbay-slow": sys.argv[1]})
try:
    runner.start(LaunchSpec(env={}, deadline=time.monotonic() + 3))
except HandshakeTimeoutError:
    print("gave up", flush=True)  # and exits, without a kill()
"""


@pytest.mark.timeout(120)
def test_a_late_container_of_a_process_that_exits_is_removed(relay: EngineRelay, plugbay_docker: Any) -> None:  # noqa: F811
    # a script whose start ran out of time and that exits at once: the engine made the container after the
    # process gave up on it, and it stayed behind (no kill() to wait for it: the interpreter's exit does)
    tag = uuid.uuid4().hex
    relay.hold("POST", "/containers/create")
    script = subprocess.Popen([sys.executable, "-c", _GIVES_UP_AND_EXITS, tag], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert script.stdout is not None and script.stdout.readline() == "gave up\n"
        relay.release()
        assert relay.answered.wait(30) and " 201 " in relay.answer_line, relay.answer_line
        assert script.wait(60) == 0, script.communicate()[1]
        assert _left(plugbay_docker, tag) == []
    finally:
        relay.release()
        if script.poll() is None:
            script.kill()
        script.communicate()
        for found in plugbay_docker.containers.list(all=True, filters={"label": f"test.plugbay-slow={tag}"}):
            found.remove(force=True, v=True)  # only when the test failed: the product removes it


def _interrupt_when_held(relay: EngineRelay) -> threading.Thread:
    """Ctrl-C (SIGINT to this process) once the engine's answer is held: start() waits for it."""
    def interrupt() -> None:
        if relay.holding.wait(30):
            os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=interrupt, name="plugbay-test-ctrl-c")
    thread.start()
    return thread


def _left(docker: Any, tag: str) -> list[str]:
    return [c.name for c in docker.containers.list(all=True, filters={"label": f"test.plugbay-slow={tag}"})]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cut_short", ["ctrl-c", "timeout"])
def test_a_create_whose_answer_never_came_leaves_no_container(relay: EngineRelay, plugbay_docker: Any,  # noqa: F811
                                                              monkeypatch: pytest.MonkeyPatch, cut_short: str) -> None:
    # the engine made the container, start() had no id: its clean-up removed nothing and the container stayed;
    # the SDK's timeout was a bare requests ReadTimeout, not plugbay's error
    import docker.client

    monkeypatch.setattr(docker.client, "DEFAULT_TIMEOUT_SECONDS", 2)  # the SDK's 60 s, for a short test
    tag = uuid.uuid4().hex
    runner = DockerRunner("plugbay-base:bookworm", entrypoint=["sleep", "60"], labels={"test.plugbay-slow": tag})
    relay.hold("POST", "/containers/create", answer=True)
    interrupter = _interrupt_when_held(relay) if cut_short == "ctrl-c" else None
    try:
        if interrupter is not None:
            with pytest.raises(KeyboardInterrupt):
                runner.start(LaunchSpec(env={}))
        else:
            with pytest.raises(EngineUnavailableError, match=r"did not answer.*create the container") as info:
                runner.start(LaunchSpec(env={}))
            assert "docker info" in str(info.value)
        assert relay.holding.is_set() and runner.id == ""
        assert _left(plugbay_docker, tag) == []
    finally:
        relay.release()
        if interrupter is not None:
            interrupter.join(30)
        runner.kill(0)
        for found in plugbay_docker.containers.list(all=True, filters={"label": f"test.plugbay-slow={tag}"}):
            found.remove(force=True, v=True)


def test_the_engines_answers_stay_its_answers() -> None:
    # docker's APIError is a requests HTTPError too: a 404 must stay NotFound, not "did not answer"
    import requests
    from docker.errors import APIError, NotFound

    from plugbay.runners.docker.engine import engine_call

    response = requests.Response()
    response.status_code = 404
    for answer in (NotFound("404 Client Error: Not Found", response=response),
                   APIError("500 Server Error", response=response)):
        def answered(answer: Exception = answer) -> None:
            raise answer

        with pytest.raises(type(answer)) as info:
            engine_call(answered, "inspect the container")
        assert info.value is answer


@pytest.mark.timeout(120)
def test_a_container_of_another_under_the_name_is_never_removed(relay: EngineRelay,  # noqa: F811
                                                                plugbay_docker: Any) -> None:
    # the engine refused the create ("name in use"), but the answer never came: the container under
    # that name is another's (even one of this process's own session) and must stay
    from plugbay.runners.session import managed_labels

    tag = uuid.uuid4().hex
    name = f"plugbay-test-taken-{tag[:8]}"
    theirs = plugbay_docker.containers.create("plugbay-base:bookworm", ["sleep", "60"], name=name, network_mode="none",
                                              labels={**managed_labels(), "test.plugbay-slow": tag})
    runner = DockerRunner("plugbay-base:bookworm", entrypoint=["sleep", "60"], name=name,
                          labels={"test.plugbay-slow": tag})
    relay.hold("POST", "/containers/create", answer=True)
    interrupter = _interrupt_when_held(relay)
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.start(LaunchSpec(env={}))
        assert _left(plugbay_docker, tag) == [name]
        theirs.reload()
    finally:
        relay.release()
        interrupter.join(30)
        runner.kill(0)
        theirs.remove(force=True, v=True)
