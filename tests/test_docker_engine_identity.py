"""What a container record names of the engine and machine that made its container: the engine's /info answer is
untrusted (tests/docker_standin.py plays the engine), a record is read back under the same rules it was written by,
a record of another machine's host is never judged by this machine's /proc, and a record's own file stays the one
line earlier releases read as their host's session."""

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
from plugbay.runners.docker.madehere import (_write_sibling, _writable_roots, engine_identity, forget_made, note_engine,
                                             read_records, record_made, stale_records)
from plugbay.runners.procclaims import write_session_record
from plugbay.runners.session import machine_identity, session_alive, start_ticks
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


@pytest.mark.parametrize("status", [401, 405], ids=["unauthorized", "method-not-allowed"])
def test_a_socket_proxy_refusing_info_with_any_4xx_is_an_engine_that_tells_no_id(standin: Standin, status: int) -> None:
    standin(_info_engine((status, {"message": "refused by the socket proxy"})))
    with pytest.raises(RunnerError, match="refused to run") as info:  # the create's refusal: /info's was taken
        DockerRunner("plugbay-kv:latest").start(LaunchSpec(env={}))
    assert "docker info" not in str(info.value)


@pytest.mark.parametrize("status", [400, 501], ids=["bad-request", "not-implemented"])
def test_an_info_refusal_no_retry_gets_past_says_to_allow_info_on_the_proxy(standin: Standin, status: int) -> None:
    standin(_info_engine((status, {"message": "not passed by the socket proxy"})))
    with pytest.raises(RunnerError, match=f"refused docker info \\(HTTP {status}.*Allow GET /info on the proxy"):
        DockerRunner("plugbay-kv:latest").start(LaunchSpec(env={}))


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


def test_a_record_of_another_machines_host_is_never_judged_by_this_machines_proc(
        recorded: str, gone_session: str) -> None:
    record = record_of(recorded)
    record.write_text(gone_session)
    sibling = record.parent / f"{record.name}.made"
    machine = [line for line in sibling.read_text().splitlines() if line.startswith("machine ")]
    assert machine == ([f"machine {machine_identity()}"] if machine_identity() else [])  # none without /etc/machine-id
    assert recorded in [r.container_id for r in stale_records(0, ())]  # this machine's host, gone
    sibling.write_text(f"engine ENGINE-1 /var/lib/docker\nmachine {'0' * 32}\n")  # a clone's, same engine
    assert recorded not in [r.container_id for r in stale_records(0, ())]


def test_a_records_own_file_is_the_one_line_earlier_releases_read(recorded: str) -> None:
    text = record_of(recorded).read_text()
    # how releases before engine identities read a record: the whole file is "session.start"
    session, _, start = text[:200].strip().partition(".")
    assert session_alive(session, start), f"an earlier release takes this live host's record for a gone one: {text!r}"
    (mine,) = [r for r in read_records() if r.container_id == recorded]
    assert mine.engine == "ENGINE-1 /var/lib/docker" and mine.machine == (machine_identity() or None)


@pytest.mark.parametrize("line", ["engine ENGINE-1 /var/lib/docker\u2028", "engine ENGINE-1 /var/lib/docker ",
                                  "engine bad id", "engine \u00e9"], ids=["separator", "space", "id", "non-ascii"])
@pytest.mark.parametrize("where", ["sibling", "second-line"])
def test_an_engine_a_record_could_not_have_been_written_with_is_read_as_none(
        recorded: str, line: str, where: str) -> None:
    record = record_of(recorded)
    if where == "sibling":
        (record.parent / f"{record.name}.made").write_text(f"{line}\n", encoding="utf-8")
    else:  # as this release's development wrote records, the engine on the record's second line
        (record.parent / f"{record.name}.made").unlink()
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


def test_a_sibling_an_earlier_release_left_with_its_dropped_record_goes(recorded: str) -> None:
    record = record_of(recorded)
    sibling = record.parent / f"{record.name}.made"
    record.unlink()  # as an earlier release's forget_made drops a record: the sibling unknown to it stays
    read_records(tidy=True)
    assert sibling.exists()  # a young one may be a record's being written: kept a while
    aged = sibling.stat().st_mtime - 120
    os.utime(sibling, (aged, aged))
    read_records()  # as the leak check reads them: no file changes
    assert sibling.exists()
    read_records(tidy=True)
    assert not sibling.exists()


def test_a_dry_run_sweep_changes_no_file_of_the_records(standin: Standin, recorded: str) -> None:
    record = record_of(recorded)
    sibling = record.parent / f"{record.name}.made"
    stranger = record.parent / "notes.made"  # no container id's: no sibling record_made wrote
    stranger.write_text("mine\n")
    try:
        record.unlink()  # as an earlier release's forget_made drops a record: the sibling unknown to it stays
        aged = sibling.stat().st_mtime - 120
        for path in (sibling, stranger):
            os.utime(path, (aged, aged))
        standin(lambda method, path: (200, []) if path == "/containers/json" else (404, {"message": "page not found"}))
        sweep(grace=0, dry_run=True)
        assert sibling.exists(), "a dry-run sweep removed a record's sibling"
        sweep(grace=0)
        assert not sibling.exists() and stranger.exists()
    finally:
        stranger.unlink(missing_ok=True)


def test_a_sweep_that_read_a_record_before_its_sibling_keeps_the_machine_line_the_sibling_got_since() -> None:
    # record_made writes the record, then its sibling: a sweep may read the record between the two, and note
    # its engine after both. The real functions, stepped in that order
    machine = machine_identity()
    if machine is None:
        pytest.skip("no machine identity on this machine: records here name no machine")
    container_id = secrets.token_hex(32)
    root = next(root for root in _writable_roots() if write_session_record(root, None, container_id))
    try:
        (early,) = [r for r in read_records() if r.container_id == container_id]
        assert early.machine is None
        _write_sibling(root / container_id, "ENGINE-1 /var/lib/docker", machine)
        note_engine(early, "ENGINE-1 /var/lib/docker")
        (late,) = [r for r in read_records() if r.container_id == container_id]
        assert late.machine == machine, "the sweep's note dropped the machine line: a clone's /proc judges the host"
    finally:
        forget_made(container_id)


def test_a_sweep_says_why_it_keeps_the_record_of_another_machines_host(
        standin: Standin, recorded: str, gone_session: str) -> None:
    record = record_of(recorded)
    record.write_text(gone_session)
    (record.parent / f"{record.name}.made").write_text(f"engine ENGINE-1 /var/lib/docker\nmachine {'0' * 32}\n")
    info = {"ID": "ENGINE-1", "DockerRootDir": "/var/lib/docker"}
    standin(lambda method, path: (200, info) if path == "/info" else (200, []) if path == "/containers/json"
            else (404, {"message": "no such container"}))
    spared: dict[str, str] = {}
    sweep(grace=0, spared=spared)
    assert record.exists()
    assert recorded in spared and f"machine {'0' * 32}" in spared[recorded], spared
