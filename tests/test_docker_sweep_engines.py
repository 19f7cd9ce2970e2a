"""A sweep judges only the records of the engine it talks to: run against another engine (a cron job without the
user's DOCKER_HOST, a home folder shared by machines) it took the records of the first engine's containers for
those of containers removed without plugbay, and dropped them, leaving those containers, their host gone, to
`docker rm -f`. The second engine here is a real dockerd of its own (tests/second_engine.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker.errors import NotFound

from plugbay.runners.base import LaunchSpec
from plugbay.runners.docker import DockerRunner, sweep
from plugbay.runners.docker.engine import SOCKET_DIR
from plugbay.runners.docker.madehere import forget_made
from plugbay.runners.session import SESSION, host_session_id
from tests.cli_util import cli_env, plugbay
from tests.procs import first_line_then_sigkill
from tests.records_util import record_of
from tests.second_engine import Engine, second_engine_running
from tests.test_docker_runner import CRASHING_HOST

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("plugbay_docker")]

SRC = Path(__file__).resolve().parent.parent / "src"


@pytest.fixture
def crashed(plugbay_docker: Any) -> Iterator[str]:
    """The container of a host that died by SIGKILL, on the machine's engine: its record stays."""
    facts = first_line_then_sigkill([sys.executable, "-c", CRASHING_HOST, str(SRC)])
    try:
        yield facts["id"]
    finally:
        try:
            plugbay_docker.containers.get(facts["id"]).remove(force=True)
        except NotFound:  # swept, as expected
            pass
        forget_made(facts["id"])
        shutil.rmtree(facts["reattach"]["host_socket_dir"], ignore_errors=True)


def _sibling(record: Path) -> Path:
    return record.parent / f"{record.name}.made"  # the engine and machine of the record


def _session(client: Any, container_id: str) -> str:
    """The host session that started ``container_id`` (its plugbay.session label)."""
    return str(client.containers.get(container_id).labels[SESSION])


def _engine_id(client: Any) -> str:
    return str(client.info()["ID"])


def test_a_sweep_of_another_engine_keeps_the_records_of_this_ones_containers(
        plugbay_docker: Any, other_engine: Engine, crashed: str) -> None:
    record = record_of(crashed)
    this_id, other_id = _engine_id(plugbay_docker), _engine_id(other_engine.client)
    assert this_id != other_id
    spared: dict[str, str] = {}
    # no grace: the record is old enough, its host gone, and the other engine says it has no such container
    assert sweep(client=other_engine.client, grace=0, spared=spared) == []
    assert record.is_file(), "a sweep of another engine dropped the record of this engine's container"
    assert f"engine {this_id} " in _sibling(record).read_text()  # the engine that made it, by its own ID
    assert this_id in spared[crashed] and "DOCKER_HOST" in spared[crashed], spared
    # the command, pointed at the other engine as a cron job's DOCKER_HOST would: the record stays, named in "left"
    run = plugbay("sweep", "--docker", "--grace", "0", "--json", env=cli_env(DOCKER_HOST=other_engine.url))
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    assert found["docker"] == [] and this_id in found["left"][crashed], found
    assert record.is_file()
    text = plugbay("sweep", "--docker", "--grace", "0", env=cli_env(DOCKER_HOST=other_engine.url)).stdout
    assert any(line.startswith(f"left {crashed[:12]}: record {record} kept") for line in text.splitlines()), text
    # the record still proves the container plugbay's to a sweep of its own engine, which removes both
    socket_dir = plugbay_docker.containers.get(crashed).labels[SOCKET_DIR]
    # of its session only: another run's gone session (a container between hosts) is not this test's to remove
    assert crashed in sweep(client=plugbay_docker, grace=0, sessions=[_session(plugbay_docker, crashed)])
    with pytest.raises(NotFound):
        plugbay_docker.containers.get(crashed)
    assert not record.exists()
    assert not Path(socket_dir).exists()


def test_a_record_naming_no_engine_is_kept_until_its_engine_lists_the_container(
        plugbay_docker: Any, other_engine: Engine, crashed: str) -> None:
    record = record_of(crashed)
    session_line = record.read_text()
    _sibling(record).unlink()  # as releases before this one wrote it: the host's session alone
    spared: dict[str, str] = {}
    sweep(client=other_engine.client, grace=0, spared=spared)
    assert record.is_file(), "a sweep of an engine that does not have the container dropped its record"
    assert record.read_text() == session_line
    assert "names no engine" in spared[crashed], spared
    # the container's own engine lists it (its labels say plugbay's, its id is recorded): swept, record and all
    assert crashed in sweep(client=plugbay_docker, grace=0, sessions=[_session(plugbay_docker, crashed)])
    assert not record.exists()


def test_a_record_naming_no_engine_gets_the_engine_that_lists_its_container(plugbay_docker: Any) -> None:
    runner = DockerRunner("plugbay-base:bookworm", entrypoint=["sleep", "120"])
    try:
        runner.start(LaunchSpec(env={}))
        record = record_of(str(runner.id))
        session_line = record.read_text()
        _sibling(record).unlink()
        sweep(client=plugbay_docker, dry_run=True)
        assert record.read_text() == session_line and not _sibling(record).exists()  # a dry run changes nothing
        # its host (this process) lives: the container stays, and its record
        sweep(client=plugbay_docker, sessions=[host_session_id()])
        assert record.read_text() == session_line  # the one line earlier releases read
        # the engine noted; no machine: a sweep cannot tell which machine's host wrote a record
        assert _sibling(record).read_text().splitlines() == [f"engine {_engine_id(plugbay_docker)} "
                                                             f"{plugbay_docker.info()['DockerRootDir']}"]
        assert plugbay_docker.containers.get(str(runner.id)).status == "running"
    finally:
        runner.kill()


def test_a_second_engine_leaves_the_machines_default_bridge() -> None:
    # a dockerd with no bridge deletes docker0 where it runs: started in the machine's network namespace, it
    # took the machine's engine's, and that engine's containers on the default network failed to start after
    docker0 = Path("/sys/class/net/docker0")
    if not docker0.exists():
        pytest.skip("the machine's engine has no docker0 here to keep")
    engine = second_engine_running()
    next(engine)
    try:
        assert docker0.exists()
    finally:
        engine.close()
    assert docker0.exists()


_HOLDER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from tests.second_engine import second_engine_running
import pytest
running = second_engine_running()  # held: a generator collected would stop the engine
try:
    url = next(running).url
except pytest.skip.Exception as exc:  # none can exist here; one that failed to start raises on, its log told
    print("skip", exc.msg, flush=True)
    sys.exit(0)
print("url", url, flush=True)
time.sleep(600)
"""


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs: its /proc entry is there and is no zombie (an exited process its new
    parent, after the holder's death, has not reaped: a container's init may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def test_a_second_engine_ends_with_the_test_run_that_started_it() -> None:
    # its dockerd runs in a session of its own: a test run killed (a CI timeout's SIGKILL) left it running
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(SRC.parent)], stdout=subprocess.PIPE, text=True)
    folder: Path | None = None
    dockerd = 0
    try:
        assert holder.stdout is not None
        told = holder.stdout.readline().strip()
        if told.startswith("skip "):
            holder.wait(60)
            pytest.skip(told.removeprefix("skip "))
        if not told.startswith("url "):
            code = holder.wait(60)
            pytest.fail(f"the second engine did not start in the holder (exit code {code}; its stderr above)")
        folder = Path(told.removeprefix("url unix://")).parent
        dockerd = int((folder / "docker.pid").read_text())
        holder.kill()
        holder.wait(30)
        deadline = time.monotonic() + 60  # a bound on dockerd's own shutdown, not a speed claim
        while _running(dockerd) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running(dockerd), "the second dockerd outlived the test run that started it"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(30)
        if dockerd and _running(dockerd):  # the engine that run started: ours to end
            os.kill(dockerd, signal.SIGTERM)
            for _ in range(300):
                if not _running(dockerd):
                    break
                time.sleep(0.2)
        if folder is not None:
            shutil.rmtree(folder)
