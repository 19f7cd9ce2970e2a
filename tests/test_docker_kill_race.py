"""DockerRunner: a kill() from another thread meets start() at each point it can, every time.

The engine is reached through a relay (tests/engine_relay.py, a stand-in DOCKER_HOST)
that holds one request: the container create (kill() finds no container yet) or the
container start (kill() finds a created container and removes it). Once the container
runs, start() is held by its thread's trace function while its log streams open
(tests/race_util.py). The plugin writes a marker into its bind-mounted socket folder
and then waits, so the test knows it was launched. Each time start() must end with a
RunnerError that says it was killed, no container may be left, a later start() is
refused and kill() again is harmless.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from plugbay.errors import RunnerError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.docker import DockerRunner
from plugbay.runners.docker.logs import ContainerLogStream
from tests.engine_relay import EngineRelay, relay  # noqa: F401  (relay is a fixture)
from tests.race_util import PauseAt, Starting, wait_for_file

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("plugbay_docker")]

BASE = "plugbay-base:bookworm"
# Launched: writes its marker into the socket folder (bind-mounted from the test's), then waits.
WAITER = ("import os, time; open(os.path.join(os.environ['PLUGIN_UNIX_SOCKET_DIR'], 'launched'), 'w').close();"
          " time.sleep(30)")
KILLED = (rf"DockerRunner for '{BASE}' was killed while it started the container; plugbay removed it again\."
          r" Make a new runner to start the plugin")
REFUSED = "was killed; a runner runs one container once: make a new runner"


def _containers(docker: Any, tag: str) -> list[str]:
    return [c.id for c in docker.containers.list(all=True, filters={"label": f"plugbay.test-race={tag}"})]


def _setup(tmp_path: Path) -> tuple[DockerRunner, LaunchSpec, Path, str]:
    tag = uuid.uuid4().hex
    folder = tmp_path / "sock"
    folder.mkdir()
    runner = DockerRunner(BASE, entrypoint=["python3", "-c", WAITER])
    spec = LaunchSpec(env={}, socket_dir=str(folder), labels={"plugbay.test-race": tag})
    return runner, spec, folder / "launched", tag


def _check_after(runner: DockerRunner, spec: LaunchSpec, docker: Any, tag: str, error: BaseException | None) -> None:
    assert isinstance(error, RunnerError), error
    assert re.fullmatch(KILLED, str(error)), error
    assert _containers(docker, tag) == []  # removed, not merely stopped
    with pytest.raises(RunnerError, match=REFUSED):
        runner.start(spec)
    runner.kill()  # again: harmless
    runner.kill(0)
    assert _containers(docker, tag) == []  # the refused start created nothing


@pytest.mark.timeout(120)
@pytest.mark.parametrize("folder", ["given", "runner's own"])
def test_kill_while_the_engine_creates_the_container(relay: EngineRelay, plugbay_docker: Any,
                                                     tmp_path: Path, folder: str) -> None:
    """kill() finds no container (its create is on its way); start() removes what the create made.

    With no socket folder given, the runner made its own and kill() removes it at once: the
    create then fails at the engine (its bind source is gone), and that too is reported as the kill.
    """
    runner, spec, _marker, tag = _setup(tmp_path)
    if folder != "given":
        spec = LaunchSpec(env={}, labels=spec.labels)
    relay.hold("POST", "/containers/create")
    starting = Starting(lambda: runner.start(spec))
    try:
        assert relay.holding.wait(30), "the create never reached the engine"
        runner.kill(grace=1.0)
        assert _containers(plugbay_docker, tag) == []
    finally:
        relay.release()
    _check_after(runner, spec, plugbay_docker, tag, starting.outcome(60))


@pytest.mark.timeout(120)
def test_kill_between_create_and_start(relay: EngineRelay, plugbay_docker: Any, tmp_path: Path) -> None:
    """kill() removes the created container while its start is held; the start then finds none."""
    runner, spec, marker, tag = _setup(tmp_path)
    relay.hold("POST", "/containers/[0-9a-f]{64}/start")
    starting = Starting(lambda: runner.start(spec))
    try:
        assert relay.holding.wait(30), "the start never reached the engine"
        assert len(_containers(plugbay_docker, tag)) == 1  # created, not started
        runner.kill(grace=1.0)
        assert _containers(plugbay_docker, tag) == []  # kill() removed it though start() is not done
    finally:
        relay.release()
    _check_after(runner, spec, plugbay_docker, tag, starting.outcome(60))
    assert not marker.exists()  # it never ran


@pytest.mark.timeout(120)
def test_kill_while_the_log_streams_open(relay: EngineRelay, plugbay_docker: Any, tmp_path: Path) -> None:
    """The container runs (its marker is there); start() is held before it watches the exit."""
    runner, spec, marker, tag = _setup(tmp_path)
    pause = PauseAt(DockerRunner._watch_exit.__code__, "call")
    starting = Starting(lambda: runner.start(spec), pause)
    try:
        pause.wait_reached(60)
        wait_for_file(marker)
        assert len(_containers(plugbay_docker, tag)) == 1
        runner.kill(grace=1.0)
        assert _containers(plugbay_docker, tag) == []
    finally:
        pause.release()
    _check_after(runner, spec, plugbay_docker, tag, starting.outcome(60))


@pytest.mark.timeout(120)
def test_kill_after_start_returned_while_the_plugin_waits(relay: EngineRelay, plugbay_docker: Any,
                                                          tmp_path: Path) -> None:
    """The runner's part of "kill() while the host waits for the handshake line": start() is done."""
    runner, spec, marker, tag = _setup(tmp_path)
    starting = Starting(lambda: runner.start(spec))
    assert starting.outcome(60) is None and starting.returned
    wait_for_file(marker)
    lines = runner.stdout_lines()
    runner.kill(grace=1.0)
    assert list(lines) == []  # the reader ends: nothing was printed, the stream is closed
    assert _containers(plugbay_docker, tag) == [] and runner.wait(0) is not None
    with pytest.raises(RunnerError, match=REFUSED):
        runner.start(spec)
    runner.kill(0)


@pytest.mark.timeout(120)
def test_kill_while_start_adds_the_second_log_stream(relay: EngineRelay, plugbay_docker: Any,
                                                     tmp_path: Path) -> None:
    """kill() closes the log streams while start() adds the stderr one: kill() must not fail
    ("dictionary changed size during iteration"), and start() still ends what it made."""
    runner, spec, _marker, tag = _setup(tmp_path)
    pause = PauseAt(ContainerLogStream.__init__.__code__, "return", lambda frame: frame.f_locals["which"] == "stderr")
    starting = Starting(lambda: runner.start(spec), pause)
    closing = PauseAt(ContainerLogStream.close.__code__, "call")  # kill() is in its loop over the streams
    try:
        pause.wait_reached(60)
        killing = Starting(lambda: runner.kill(grace=1.0), closing)
        closing.wait_reached()
    finally:
        pause.release()
    try:
        assert starting.ended(60)  # start() added the stderr stream meanwhile, saw the kill and cleaned up
    finally:
        closing.release()
    assert killing.outcome(60) is None
    _check_after(runner, spec, plugbay_docker, tag, starting.outcome(60))


class _RemovedElsewhere:
    """An engine API whose container another thread's kill() is removing: each removal is refused with
    the engine's 409 "removal ... already in progress" until that removal is done (inspect: gone)."""

    def __init__(self) -> None:
        self.inspects = 0

    def inspect(self) -> dict[str, Any] | None:
        self.inspects += 1
        return {"Status": "removing", "Running": False} if self.inspects < 3 else None

    def remove_container(self, container_id: str, **_kwargs: Any) -> None:
        import requests
        from docker.errors import APIError

        response = requests.Response()
        response.status_code = 409
        raise APIError("409 Client Error: Conflict", response=response,
                       explanation=f"removal of container {container_id} is already in progress")


def test_a_removal_already_in_progress_is_no_failure(caplog: pytest.LogCaptureFixture) -> None:
    """start()'s clean-up and a kill() from another thread may both remove the container: the one the
    engine answers 409 "already in progress" waits for the other's removal and warns of nothing."""
    from plugbay.runners.docker.engine import end_container

    api = _RemovedElsewhere()
    with caplog.at_level(logging.WARNING, logger="plugbay.runners.docker"):
        end_container(api, "c0ffee" * 10 + "c0ff", grace=0, remove=True, inspect=api.inspect,
                      stopped=lambda state: None)
    assert caplog.records == [], [r.getMessage() for r in caplog.records]
    assert api.inspects >= 3  # it returned once the container was gone, not at once


@pytest.mark.timeout(120)
def test_two_removals_of_one_container_at_once_warn_of_nothing(plugbay_docker: Any,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    from plugbay.runners.docker.engine import end_container

    for _ in range(4):
        container = plugbay_docker.containers.run(BASE, ["sleep", "60"], detach=True, network_mode="none",
                                                  name=f"fx-race-{uuid.uuid4().hex[:8]}")
        barrier = threading.Barrier(2)

        def remove() -> None:
            barrier.wait()
            end_container(plugbay_docker.api, container.id, grace=0, remove=True, stopped=lambda state: None,
                          inspect=lambda: _state(plugbay_docker, container.id))

        with caplog.at_level(logging.WARNING, logger="plugbay.runners.docker"):
            threads = [threading.Thread(target=remove) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
        assert plugbay_docker.containers.list(all=True, filters={"id": container.id}) == []
    assert caplog.records == [], [r.getMessage() for r in caplog.records]


def _state(docker: Any, container_id: str) -> dict[str, Any] | None:
    from docker.errors import NotFound

    try:
        return dict(docker.api.inspect_container(container_id)["State"])
    except NotFound:
        return None
