"""The Docker runner and sweep against an engine that fails mid-way (tests/docker_standin.py):
a container removed while a sweep lists it, a connection dropped during kill()."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import pytest

from plugbay.errors import RunnerError
from plugbay.runners.docker import DockerRunner, sweep
from plugbay.runners.docker.engine import engine
from plugbay.runners.session import HOST, MANAGED, SESSION, SESSION_START
from tests.docker_standin import DROP, Answer, Reply, StandinEngine, standin  # noqa: F401

Standin = Callable[[Answer], StandinEngine]
CID = "d" * 64
RUNNING = {"Id": CID, "Name": "/plugbay-standin", "State": {"Status": "running", "Running": True, "ExitCode": 0},
           "Config": {"Labels": {MANAGED: "true"}, "Image": "x"}, "NetworkSettings": {"Ports": {}}}


# --- sweep ----------------------------------------------------------------------------------------

def test_a_container_removed_while_the_sweep_lists_is_skipped(standin: Standin) -> None:
    listed, gone = "a" * 64, "b" * 64  # the first is removed (by its host's kill) before the SDK inspects it
    labels = {MANAGED: "true", SESSION: "999999-0123456789ab", SESSION_START: "1", HOST: socket.gethostname()}

    def answer(method: str, path: str) -> Reply:
        if path == "/containers/json":
            return 200, [{"Id": listed}, {"Id": gone}]
        if path == f"/containers/{gone}/json":
            return 200, {"Id": gone, "Name": "/plugbay-gone", "State": {"Status": "exited"},
                         "Config": {"Labels": labels}}
        if method == "DELETE":
            return 204, None
        return 404, {"message": "No such container"}

    engine_ = standin(answer)
    assert sweep(live_sessions=[]) == [gone]
    assert ("DELETE", f"/containers/{gone}") in engine_.requests


def test_an_engine_error_in_the_sweep_is_a_runner_error(standin: Standin) -> None:
    standin(lambda method, path: (500, {"message": "the engine's store is locked"}))
    with pytest.raises(RunnerError, match="the engine's store is locked") as info:
        sweep()
    assert "sweep again" in str(info.value)


# --- kill -----------------------------------------------------------------------------------------

def _started_runner() -> DockerRunner:
    """A runner as start() leaves it, for the container CID on the stand-in engine."""
    runner = DockerRunner("plugbay-kv:latest")
    runner._client, runner._container_id, runner._began = engine(), CID, True
    return runner


def test_kill_removes_the_container_when_the_engine_drops_its_stop(standin: Standin) -> None:
    def answer(method: str, path: str) -> Reply:
        if method == "GET":
            return 200, RUNNING
        return DROP if method == "POST" else (204, None)  # the stop's connection breaks; the removal works

    engine_ = standin(answer)
    _started_runner().kill(0)  # no bare requests error: the forced removal is the last resort
    assert ("POST", f"/containers/{CID}/stop") in engine_.requests
    assert ("DELETE", f"/containers/{CID}") in engine_.requests


def test_kill_says_how_to_remove_a_container_the_engine_drops_every_request_for(
        standin: Standin, caplog: pytest.LogCaptureFixture) -> None:
    standin(lambda method, path: (200, RUNNING) if method == "GET" else DROP)
    with caplog.at_level(logging.WARNING, logger="plugbay.runners.docker"):
        _started_runner().kill(0)
    assert any(f"docker rm -f {CID[:12]}" in r.getMessage() for r in caplog.records), caplog.text
