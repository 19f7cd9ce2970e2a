"""What a container record names of the engine and machine that made its container: the engine's /info answer is
untrusted (tests/docker_standin.py plays the engine), and a record is read back under the same rules it was written
by."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from plugbay.errors import RunnerError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.docker import DockerRunner, sweep
from plugbay.runners.docker.engine import engine
from plugbay.runners.docker.madehere import engine_identity, forget_made, read_records, record_made
from plugbay.runners.session import start_ticks
from tests.docker_standin import Answer, Reply, StandinEngine, standin  # noqa: F401
from tests.records_util import record_of

Standin = Callable[[Answer], StandinEngine]


def _info_engine(info: Reply, asked: list[str] | None = None) -> Answer:
    """An engine answering /info with ``info``, an image lookup, and refusing the create (the start ends there)."""
    def answer(method: str, path: str) -> Reply:
        if path == "/info":
            if asked is not None:
                asked.append(path)
            return info
        if path.startswith("/images/"):
            return 200, {"Id": "sha256:" + "1" * 64, "Config": {}, "RepoDigests": []}
        return 500, {"message": "the stand-in creates nothing"}
    return answer


def _identity(standin: Standin, info: Any) -> str | None:
    standin(_info_engine((200, info)))
    client = engine()
    try:
        return engine_identity(client)
    finally:
        client.close()


@pytest.mark.parametrize("answer", [["ID", "x"], "an engine", 7], ids=["list", "string", "number"])
def test_an_info_answer_that_is_no_object_is_a_runner_error(standin: Standin, answer: Any) -> None:
    standin(_info_engine((200, answer)))
    with pytest.raises(RunnerError, match="not an object"):
        DockerRunner("plugbay-kv:latest").start(LaunchSpec(env={}))
    with pytest.raises(RunnerError, match="not an object"):
        sweep()


@pytest.mark.parametrize("root", ["/var/lib/docker\udc80", "/var/lib/docker\u2028x", "/var/lib/docker\x85x",
                                  "/var/lib/docker ", "/var/lib/dockér"],
                         ids=["surrogate", "line-separator", "next-line", "trailing-space", "non-ascii"])
def test_a_data_root_a_record_could_not_read_back_is_left_out(standin: Standin, root: str) -> None:
    assert _identity(standin, {"ID": "ENGINE-1", "DockerRootDir": root}) == "ENGINE-1"
    spaced = {"ID": "ENGINE-1", "DockerRootDir": "/var/lib/my docker"}
    assert _identity(standin, spaced) == "ENGINE-1 /var/lib/my docker"


def test_an_engine_failing_info_fails_the_start_and_one_refusing_it_does_not(standin: Standin) -> None:
    standin(_info_engine((500, {"message": "the engine's store is locked"})))
    with pytest.raises(RunnerError, match="docker info.*the engine's store is locked"):
        DockerRunner("plugbay-kv:latest").start(LaunchSpec(env={}))
    standin(_info_engine((403, {"message": "forbidden by the socket proxy"})))
    with pytest.raises(RunnerError, match="refused to run") as info:  # the create's refusal: /info's was taken
        DockerRunner("plugbay-kv:latest").start(LaunchSpec(env={}))
    assert "docker info" not in str(info.value)


def test_a_runtime_check_and_the_engine_identity_share_one_info_answer(standin: Standin) -> None:
    asked: list[str] = []
    standin(_info_engine((200, {"ID": "ENGINE-1", "DockerRootDir": "/d", "Runtimes": {"runc": {}}}), asked))
    with pytest.raises(RunnerError, match="refused to run"):
        DockerRunner("plugbay-kv:latest", runtime="runc").start(LaunchSpec(env={}))
    assert asked == ["/info"]


@pytest.fixture
def gone_session() -> str:
    """A host session of a process that has exited: its record's host is gone, on this machine."""
    done = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True, timeout=30)
    pid = int(done.stdout)
    return f"{pid}-{secrets.token_hex(6)}.{start_ticks(pid) or '1'}"


@pytest.fixture
def recorded() -> Iterator[str]:
    container_id = secrets.token_hex(32)
    assert record_made(container_id, "ENGINE-1 /var/lib/docker")
    try:
        yield container_id
    finally:
        forget_made(container_id)


@pytest.mark.parametrize("line", ["engine ENGINE-1 /var/lib/docker\u2028", "engine ENGINE-1 /var/lib/docker ",
                                  "engine bad id", "engine \u00e9"], ids=["separator", "space", "id", "non-ascii"])
def test_an_engine_a_record_could_not_have_been_written_with_is_read_as_none(recorded: str, line: str) -> None:
    record = record_of(recorded)
    record.write_text(f"{record.read_text().splitlines()[0]}\n{line}\n", encoding="utf-8")
    (mine,) = [r for r in read_records() if r.container_id == recorded]
    assert mine.engine is None


def test_a_sweep_of_an_engine_refusing_info_does_not_say_another_engine_made_a_container(
        standin: Standin, recorded: str, gone_session: str) -> None:
    record_of(recorded).write_text(gone_session)
    standin(lambda method, path: (200, []) if path == "/containers/json" else (404, {"message": "page not found"}))
    spared: dict[str, str] = {}
    sweep(grace=0, spared=spared)
    assert "does not tell its ID" in spared[recorded] and "not this engine" not in spared[recorded], spared
    assert os.path.exists(record_of(recorded))
