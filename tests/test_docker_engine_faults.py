"""The Docker runner and sweep against an engine that fails mid-way (tests/docker_standin.py):
a container removed while a sweep lists it."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from plugbay.errors import RunnerError
from plugbay.runners.docker import sweep
from plugbay.runners.session import HOST, MANAGED, SESSION, SESSION_START
from tests.docker_standin import Answer, Reply, StandinEngine, standin  # noqa: F401

Standin = Callable[[Answer], StandinEngine]


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
