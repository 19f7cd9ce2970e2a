"""The Docker runner against a hung engine (tests/docker_standin.py): one that accepts every
connection and never answers. Each request is bounded by the runner's engine_timeout, not the
docker SDK's 60 s, and the failure says the engine did not answer and what to check."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from plugbay.errors import ConfigError, EngineUnavailableError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.docker import DockerRunner
from plugbay.runners.docker.engine import engine
from tests.docker_standin import SILENT, Answer, Reply, StandinEngine, standin  # noqa: F401

Standin = Callable[[Answer], StandinEngine]
CID = "d" * 64
BOUND = 0.5  # the runner's engine_timeout here: far below the stand-in's own end of a silent answer (60 s)
RUNNING = {"Id": CID, "State": {"Status": "running", "Running": True, "ExitCode": 0}}


def _hung(method: str, path: str) -> Reply:
    return SILENT


def _still_held(engine_: StandinEngine) -> bool:
    """Whether the stand-in still holds its silent answers: the runner gave up, not the stand-in."""
    return not engine_._closing.is_set()


def _killed(engine_: Any, grace: float, caplog: pytest.LogCaptureFixture) -> tuple[Any, str]:
    """kill(grace) of a runner that started a container on the stand-in ``engine_``: (the stand-in, the
    warnings logged); the stand-in still held its silent answers then (the runner gave up first)."""
    runner = DockerRunner("plugbay-kv:latest", engine_timeout=BOUND)
    runner._client, runner._container_id, runner._began = engine(BOUND), CID, True
    with caplog.at_level(logging.WARNING, logger="plugbay.runners.docker"):
        runner.kill(grace)
    assert _still_held(engine_)
    return engine_, " ".join(r.getMessage() for r in caplog.records)

def test_kill_against_a_hung_engine_gives_up_each_request_at_engine_timeout(
        standin: Standin, caplog: pytest.LogCaptureFixture) -> None:
    engine_, message = _killed(standin(_hung), 0, caplog)
    # the inspect, then the forced removal as the last resort: two requests, each given up
    assert engine_.requests == [("GET", f"/containers/{CID}/json"), ("DELETE", f"/containers/{CID}")]
    assert f"did not answer within {BOUND:g} s when asked to remove the container" in message, message
    assert "docker info" in message and f"docker rm -f {CID[:12]}" in message, message


def test_a_stop_the_engine_never_answers_is_bounded_by_grace_plus_engine_timeout(
        standin: Standin, caplog: pytest.LogCaptureFixture) -> None:
    def answer(method: str, path: str) -> Reply:
        return (200, RUNNING) if method == "GET" else SILENT  # it answers inspects only

    engine_, message = _killed(standin(answer), 1, caplog)
    assert ("POST", f"/containers/{CID}/stop") in engine_.requests
    assert ("DELETE", f"/containers/{CID}") in engine_.requests
    assert f"did not answer within {BOUND:g} s when asked to remove the container" in message, message


def test_start_against_a_hung_engine_is_an_engine_unavailable_error(standin: Standin) -> None:
    engine_ = standin(_hung)
    runner = DockerRunner("plugbay-kv:latest", engine_timeout=BOUND)
    with pytest.raises(EngineUnavailableError, match=rf"did not answer within {BOUND:g} s") as info:
        runner.start(LaunchSpec(env={}))
    assert _still_held(engine_)
    assert "docker info" in str(info.value) and "engine_timeout" in str(info.value)
    assert engine_.requests and all(method == "GET" for method, _ in engine_.requests)  # nothing was created


def test_a_version_request_never_answered_is_an_engine_unavailable_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from plugbay.runners.docker import connect

    path = f"{tmp_path}/mute.sock"
    mute = socket.socket(socket.AF_UNIX)  # accepts connections (the backlog) and never reads or answers
    mute.bind(path)
    mute.listen(8)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    monkeypatch.setattr(connect, "_versions", {})
    try:
        with pytest.raises(EngineUnavailableError, match=rf"did not answer within {BOUND:g} s when asked to tell"):
            engine(BOUND)
    finally:
        mute.close()


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "10", True])
def test_engine_timeout_must_be_seconds(bad: object) -> None:
    with pytest.raises(ConfigError, match="engine_timeout"):
        DockerRunner("plugbay-kv:latest", engine_timeout=bad)  # type: ignore[arg-type]
