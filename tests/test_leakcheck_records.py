"""The leak check's look at container records (tests/leakcheck.py) judges a record by the engine the tests use
(DOCKER_HOST honoured) only when that engine made its container, and only a record of this run's: this
process's, one carrying this run's mark, or a gone host's. It took another engine's records, and those of a
live host of another run (a concurrent pytest session of the same user), for this run's leaks."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from plugbay.runners.base import LaunchSpec
from plugbay.runners.docker import DockerRunner
from plugbay.runners.docker.madehere import engine_identity, forget_made, record_made
from plugbay.runners.session import start_ticks
from tests import leakcheck
from tests.records_util import record_of
from tests.second_engine import Engine

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("plugbay_docker")]


def _reported(container_id: str) -> bool:
    return any(container_id in leak for leak in leakcheck._made_records())


def test_the_check_asks_the_engine_the_tests_use_about_its_own_records_only(
        plugbay_docker: Any, other_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = DockerRunner("plugbay-base:bookworm", entrypoint=["sleep", "120"])
    gone = secrets.token_hex(32)  # a container the other engine does not have (any more)
    try:
        runner.start(LaunchSpec(env={}))  # on the machine's engine, running
        monkeypatch.setenv("DOCKER_HOST", other_engine.url)  # the tests' engine is now the other one
        assert record_made(gone, engine_identity(other_engine.client))
        assert _reported(gone), "the record of a container gone from the tests' engine was not reported"
        # the machine's engine's container is not the other engine's to judge: it runs
        assert not _reported(str(runner.id)), "another engine's record was judged by the tests' engine"
        monkeypatch.delenv("DOCKER_HOST")
        assert not _reported(gone)  # and the other engine's record is not the machine's engine's to judge
    finally:
        forget_made(gone)
        runner.kill()


@pytest.fixture
def foreign_host() -> Iterator[int]:
    """A live process of another run (another pytest session's host: it carries that run's mark, as processes
    a run starts do), here a child of this one; its pid."""
    host = subprocess.Popen(["sleep", "120"], env={"PATH": os.environ["PATH"], "LEAKCHECK_RUN": "another-run"})
    try:
        yield host.pid
    finally:
        host.kill()  # the process this fixture started, held: no pid that may be another's by now
        host.wait(30)


def test_a_live_host_of_another_run_is_not_this_runs_leak(plugbay_docker: Any, foreign_host: int) -> None:
    tested = engine_identity(plugbay_docker)
    theirs, crashed = secrets.token_hex(32), secrets.token_hex(32)  # ids the engine does not have
    exited = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True, timeout=30)
    try:
        for container_id, pid in ((theirs, foreign_host), (crashed, int(exited.stdout))):
            assert record_made(container_id, tested)
            # a record as that host's runner writes it: its session (its pid, a random part) and start ticks
            record_of(container_id).write_text(f"{pid}-{secrets.token_hex(6)}.{start_ticks(pid)}")
        assert not _reported(theirs), "a live host's record of another run was counted as this run's leak"
        assert _reported(crashed), "a gone host's record of a container gone was not reported"
    finally:
        forget_made(theirs)
        forget_made(crashed)


def _carries_this_runs_mark(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"LEAKCHECK_RUN={os.environ['LEAKCHECK_RUN']}".encode() in f.read().split(b"\0")
    except OSError:
        return False


def test_a_live_host_of_this_run_no_longer_descended_from_it_is_judged(plugbay_docker: Any) -> None:
    # a host this run started whose parent exited (an orphan: the run's mark tells it, as _orphans does)
    started = subprocess.run(["sh", "-c", "sleep 120 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True,
                             check=True, timeout=30)
    orphan = int(started.stdout)
    ours = secrets.token_hex(32)  # an id the engine does not have
    try:
        assert _carries_this_runs_mark(orphan), "the orphan does not carry this run's mark"
        assert record_made(ours, engine_identity(plugbay_docker))
        record_of(ours).write_text(f"{orphan}-{secrets.token_hex(6)}.{start_ticks(orphan)}")
        assert _reported(ours), "a record of a live host of this run (an orphan) whose container is gone was missed"
    finally:
        forget_made(ours)
        if _carries_this_runs_mark(orphan):  # still the process this test started (its mark), not a pid reused since
            os.kill(orphan, signal.SIGKILL)
