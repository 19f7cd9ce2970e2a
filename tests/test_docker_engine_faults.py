"""The Docker runner and sweep against an engine that fails mid-way (tests/docker_standin.py):
a container removed while a sweep lists it, a connection dropped during kill(), a network
create refused, a wait request whose response head never comes."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

import pytest

from plugbay.errors import RunnerError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.docker import DockerRunner, sweep
from plugbay.runners.docker import waiter as waiter_module
from plugbay.runners.docker.engine import engine
from plugbay.runners.docker.adopt import reattach_labels
from plugbay.runners.docker.hardening import ensure_network
from plugbay.runners.docker.madehere import made_here, record_made
from plugbay.runners.reattachkey import SECRET, new_secret
from plugbay.runners.session import HOST, MANAGED, SESSION, SESSION_START
from tests.docker_standin import DROP, SILENT, Answer, Later, Reply, StandinEngine, standin  # noqa: F401

Standin = Callable[[Answer], StandinEngine]
CID = "d" * 64
KEY = new_secret()  # what a reattach proves the container by (its label holds the digest)
RUNNING = {"Id": CID, "Name": "/plugbay-standin", "State": {"Status": "running", "Running": True, "ExitCode": 0},
           "Config": {"Labels": {MANAGED: "true", **reattach_labels(KEY, "unix", 4000)}, "Image": "x"},
           "NetworkSettings": {"Ports": {}}}


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
    record_made(gone, None)  # as the runner that created it did (the stand-in tells no engine ID): the proof
    assert sweep(live_sessions=[]) == [gone]
    assert ("DELETE", f"/containers/{gone}") in engine_.requests
    assert not made_here(gone)  # the record went with the container


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


# --- the isolated network -------------------------------------------------------------------------

def _network_engine(create: Callable[[], Reply], made: list[bool]) -> Answer:
    def answer(method: str, path: str) -> Reply:
        if path.startswith("/images/"):
            return 200, {"Id": "sha256:" + "1" * 64, "Config": {}, "RepoDigests": []}
        if path == "/networks/create":
            return create()
        if path.startswith("/networks/") and made:
            return 200, {"Id": "e" * 64, "Name": "plugbay-isolated", "Labels": {MANAGED: "true"},
                         "Options": {"com.docker.network.bridge.enable_icc": "false"}}
        return 404, {"message": "network plugbay-isolated not found"}
    return answer


def test_a_refused_network_create_is_a_runner_error_with_the_engines_reason(standin: Standin) -> None:
    reason = "could not find an available, non-overlapping IPv4 address pool among the defaults"
    standin(_network_engine(lambda: (403, {"message": reason}), []))
    with pytest.raises(RunnerError, match="non-overlapping IPv4 address pool") as info:
        DockerRunner("plugbay-kv:latest", transport="tcp").start(LaunchSpec(env={}))
    assert "docker network prune" in str(info.value)


def test_a_network_another_host_created_meanwhile_is_used(standin: Standin) -> None:
    made: list[bool] = []

    def create() -> Reply:
        made.append(True)  # by the other host, an instant before ours
        return 409, {"message": "network with name plugbay-isolated already exists"}

    standin(_network_engine(create, made))
    client = engine()
    try:
        assert ensure_network(client, "plugbay-isolated") == "e" * 64
    finally:
        client.close()


# --- the exit watch -------------------------------------------------------------------------------

def _wait_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"plugbay-docker-wait-{CID[:12]}" and t.is_alive()]


def _attached(answer_wait: Reply) -> Answer:
    def answer(method: str, path: str) -> Reply:
        if path == f"/containers/{CID}/wait":
            return answer_wait
        return (200, RUNNING) if path == f"/containers/{CID}/json" else (404, {"message": "not found"})
    return answer


def test_detach_ends_the_exit_watch_of_an_engine_that_never_answers_the_wait(standin: Standin) -> None:
    engine_ = standin(_attached(SILENT))
    runner = DockerRunner.attach({"kind": "DockerRunner", "id": CID, "transport": "unix", SECRET: KEY},
                                 take_ownership=False)
    deadline = time.monotonic() + 10
    while ("POST", f"/containers/{CID}/wait") not in engine_.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    runner.detach()
    assert not _wait_threads(), "detach() left the exit watch's thread (and its engine connection)"


def test_a_wait_answered_long_after_its_head_is_the_exit(standin: Standin, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waiter_module, "_HEAD_WAIT", 0.2, raising=False)  # only the head has that long
    engine_ = standin(_attached(Later(1.5, {"StatusCode": 3})))
    runner = DockerRunner.attach({"kind": "DockerRunner", "id": CID, "transport": "unix", SECRET: KEY},
                                 take_ownership=False)
    try:
        assert runner.wait(20) == 3
        assert engine_.requests.count(("POST", f"/containers/{CID}/wait")) == 1  # one wait, never made again
    finally:
        runner.detach()


@pytest.mark.parametrize("host", ["tcp://[::1", "tcp://127.0.0.1:99999", "tcp://127.0.0.1:abc"])
def test_a_malformed_docker_host_is_an_engine_error_naming_it(host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's URL parsing raises a bare ValueError for these (an unknown scheme is its DockerException)."""
    from plugbay.errors import EngineUnavailableError

    monkeypatch.setenv("DOCKER_HOST", host)
    for call in (engine, sweep):
        with pytest.raises(EngineUnavailableError, match="DOCKER_HOST=.* is malformed"):
            call()
