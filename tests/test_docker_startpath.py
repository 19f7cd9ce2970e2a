"""The Docker runner's short start path against the real engine: what it skips must not hide failures.

A start reuses the API version negotiated with the same engine, opens the log
streams on their pump threads, and creates without the SDK's follow-up
inspect. An engine that goes away after the version was learned, or a log
request the engine refuses, must still surface as clear errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from plugbay.errors import ConfigError, EngineUnavailableError, RunnerError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.docker import DockerRunner
from plugbay.runners.docker.logs import ContainerLogStream
from tests.engine_relay import ENGINE, EngineRelay

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("plugbay_docker")]

BASE = "plugbay-base:bookworm"


def test_engine_gone_after_its_version_was_learned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if not Path(ENGINE).is_socket():
        pytest.skip(f"the engine is not on {ENGINE}")
    relay = EngineRelay(tmp_path / "engine.sock")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{relay.path}")
    try:
        runner = DockerRunner(BASE, entrypoint=["sleep", "30"])
        runner.start(LaunchSpec(env={}))  # negotiates the API version through the relay
        runner.kill(0)
    finally:
        relay.close()
    with pytest.raises(EngineUnavailableError, match="cannot reach the Docker engine") as info:
        DockerRunner(BASE, entrypoint=["sleep", "30"]).start(LaunchSpec(env={}))
    assert "engine.sock" in str(info.value) and "DOCKER_HOST" in str(info.value)


def test_a_refused_log_request_ends_the_stream_and_is_diagnosed(plugbay_docker: Any) -> None:
    stream = ContainerLogStream(plugbay_docker.api, "plugbay-no-such-container", "stdout")
    assert list(stream.lines()) == []  # ends, does not hang
    stream.close()
    assert stream.error is not None
    assert "stdout log request failed" in stream.error and "plugbay-no-such-container" in stream.error


def test_closing_a_log_stream_at_once_ends_its_request(plugbay_docker: Any) -> None:
    runner = DockerRunner(BASE, entrypoint=["sh", "-c", "echo ready; exec sleep 30"])
    runner.start(LaunchSpec(env={}))
    try:
        early = ContainerLogStream(plugbay_docker.api, runner.id, "stdout")
        early.close()  # very likely before its request was made: the request must still end
        assert early.done
        assert next(runner.stdout_lines()) == "ready"
    finally:
        runner.kill(0)


def test_a_container_whose_logs_cannot_be_read_fails_start(plugbay_docker: Any) -> None:
    """Its handshake line could never be read: start() says so now, not the Client's start_timeout later."""
    runner = DockerRunner(BASE, entrypoint=["sh", "-c", "echo ready; exec sleep 30"],
                          extra_create_args={"log_config": {"type": "none", "config": {}}})
    try:
        with pytest.raises(RunnerError, match="configured logging driver does not support reading") as info:
            runner.start(LaunchSpec(env={}))
    finally:
        runner.kill(0)  # a no-op after a failed start; frees the container if start() wrongly succeeded
    assert "log_config" in str(info.value)  # what to do
    assert plugbay_docker.containers.list(all=True, filters={"id": runner.id}) == []  # removed again


@pytest.mark.parametrize("extra, named", [
    ({"no_such_option": 1}, "no_such_option"),  # the SDK: TypeError
    ({"mem_limit": "lots"}, "lots"),  # the SDK: DockerException
    ({"links": "x"}, "links"),  # the SDK: ValueError
])
def test_create_arguments_the_sdk_refuses_are_a_config_error(plugbay_docker: Any, extra: dict[str, Any],
                                                             named: str) -> None:
    runner = DockerRunner(BASE, entrypoint=["sleep", "30"], extra_create_args=extra)
    try:
        with pytest.raises(ConfigError, match="extra_create_args") as info:
            runner.start(LaunchSpec(env={}))
    finally:
        runner.kill(0)
    assert named in str(info.value)
    assert plugbay_docker.containers.list(all=True, filters={"name": runner.container_name}) == []
