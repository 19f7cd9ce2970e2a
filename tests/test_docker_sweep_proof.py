"""The sweep removes a container only when plugbay can prove it made it: a container whose labels name a dead
host session (forged, or copied as `docker commit` copies them) is left alone (`plugbay sweep` says so, with
the `docker rm -f` to run), and the container a crashed host's runner created is still swept. The record of a
container removed without plugbay goes with a later sweep."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from docker.errors import NotFound

from plugbay.errors import ConfigError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.docker import DockerRunner, sweep
from plugbay.runners.docker.engine import SOCKET_DIR
from plugbay.runners.docker.grace import GRACE
from plugbay.runners.docker.madehere import forget_made, made_here, read_records
from plugbay.runners.session import HOST, HOST_PIDS, HOST_SESSION_ID, MANAGED, SESSION, SESSION_START, host_pids
from tests.cli_util import plugbay
from tests.procs import first_line_then_sigkill
from tests.records_util import record_of

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("plugbay_docker")]

BASE = "plugbay-base:bookworm"
SRC = Path(__file__).resolve().parent.parent / "src"
CRASHING_HOST = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    from plugbay.runners.base import LaunchSpec
    from plugbay.runners.docker import DockerRunner
    runner = DockerRunner("plugbay-base:bookworm", entrypoint=["sleep", "120"])
    runner.start(LaunchSpec(env={}))
    print(json.dumps({"id": runner.id}), flush=True)
    time.sleep(120)
""")


def _remove(client: Any, container_id: str) -> None:
    try:
        client.containers.get(container_id).remove(force=True)
    except NotFound:  # swept, as expected
        pass
    forget_made(container_id)  # a crashed host's record, when the test failed before the sweep dropped it


def test_a_container_with_a_dead_sessions_labels_survives_the_sweep(plugbay_docker: Any) -> None:
    crashed = first_line_then_sigkill([sys.executable, "-c", CRASHING_HOST, str(SRC)])["id"]
    forged = None
    try:
        labels = plugbay_docker.containers.get(crashed).labels
        assert labels["plugbay.managed"] == "true" and made_here(crashed)
        # every label of the crashed host's container, as a user's `docker run --label` (or a container of an
        # image `docker commit` made of it) would carry them: they claim the same dead session
        forged = plugbay_docker.containers.run(BASE, ["sleep", "120"], labels=labels, detach=True,
                                               network_mode="none").id
        listed = json.loads(plugbay("sweep", "--docker", "--dry-run", "--json").stdout)["docker"]
        assert crashed in listed and forged not in listed
        removed = sweep(sessions=[labels["plugbay.session"]])  # the forged one claims it too: a proof's test
        assert crashed in removed and forged not in removed
        assert plugbay_docker.containers.get(forged).status == "running", "swept what it did not make"
        with pytest.raises(NotFound):
            plugbay_docker.containers.get(crashed)
        assert not made_here(crashed)  # the record went with its container
    finally:
        for container_id in (crashed, forged):
            if container_id:
                _remove(plugbay_docker, container_id)


def test_the_cli_names_a_container_it_left_for_want_of_a_record(plugbay_docker: Any) -> None:
    # labels naming a host session gone from this machine (no process has that pid), as anyone may write them:
    # the sweep leaves the container, and said so only in a log line the CLI does not show
    labels = {MANAGED: "true", SESSION: "999999999-0123456789ab", SESSION_START: "1", HOST: socket.gethostname(),
              HOST_PIDS: host_pids()}
    forged = plugbay_docker.containers.run(BASE, ["sleep", "120"], labels=labels, detach=True,
                                           network_mode="none")
    try:
        listed = plugbay("sweep", "--docker", "--dry-run")
        assert listed.returncode == 0, listed.stderr
        lines = [line for line in listed.stdout.splitlines() if line.startswith(f"left {forged.short_id}:")]
        assert len(lines) == 1, listed.stdout
        assert "no runner of this user recorded creating it" in lines[0], lines
        assert f"`docker rm -f {forged.short_id}`" in lines[0], lines
        as_json = json.loads(plugbay("sweep", "--docker", "--dry-run", "--json").stdout)
        assert forged.id in as_json["left"] and forged.id not in as_json["docker"], as_json
        assert plugbay_docker.containers.get(forged.id).status == "running"
    finally:
        _remove(plugbay_docker, forged.id)


@pytest.mark.timeout(120)
def test_the_record_of_a_container_removed_without_plugbay_goes_with_the_next_sweep(plugbay_docker: Any) -> None:
    # `docker rm -f`, which plugbay's messages advise, left the record for good: no sweep lists that container again
    crashed = first_line_then_sigkill([sys.executable, "-c", CRASHING_HOST, str(SRC)])["id"]
    live = DockerRunner(BASE, entrypoint=["sleep", "120"])
    unlisted = secrets.token_hex(32)  # a container the engine has not listed yet
    socket_dir = ""
    bare: Any = None
    try:
        live.start(LaunchSpec(env={}))
        record = record_of(crashed)
        gone_session = record.read_text()
        (gone,) = [r.session for r in read_records() if r.container_id == crashed]
        # the crashed host's socket folder, which the sweep ends with its container: `docker rm -f` leaves it
        socket_dir = plugbay_docker.containers.get(crashed).labels[SOCKET_DIR]
        subprocess.run(["docker", "rm", "-f", crashed], check=True, capture_output=True, timeout=60)
        aged = time.time() - 2 * GRACE
        os.utime(record, (aged, aged))
        # the live container's record as a gone host's would read, older than the grace: only the engine's word
        # that the container exists keeps it (its host session, this process, keeps it out of the container sweep)
        live_record = record_of(str(live.id))
        live_record.write_text(gone_session)
        os.utime(live_record, (aged, aged))
        # a gone host's record written moments ago, of an id the engine does not know: within the grace, it stays
        fresh = live_record.parent / unlisted
        fresh.write_text(gone_session)
        # a container that exists but that no listing of plugbay's shows (no label): absent from the listing is
        # no proof it is gone, only the engine's NotFound for its id is
        bare = plugbay_docker.containers.create(BASE, ["sleep", "120"])
        bare_record = live_record.parent / bare.id
        bare_record.write_text(gone_session)
        os.utime(bare_record, (aged, aged))
        sweep(client=plugbay_docker, sessions=[gone])  # every record here is that session's: another's is not ours
        assert bare_record.exists(), "the record of a container the listing did not show went"
        assert not record.exists(), "the record of a container removed by `docker rm -f` stayed"
        assert live_record.exists() and made_here(str(live.id)), "the record of a live container went"
        assert fresh.exists(), "a record younger than the grace went"
    finally:
        forget_made(unlisted)
        if bare is not None:
            bare.remove(force=True)
            forget_made(bare.id)
        live.kill()
        _remove(plugbay_docker, crashed)
        if socket_dir:
            shutil.rmtree(socket_dir, ignore_errors=True)


@pytest.mark.timeout(120)
def test_a_sweep_of_some_sessions_judges_only_their_records(plugbay_docker: Any) -> None:
    # before: sweep(sessions=[]) or of another session dropped a gone host's record of a container removed without
    # plugbay: the records were judged as by a sweep of every session
    crashed = first_line_then_sigkill([sys.executable, "-c", CRASHING_HOST, str(SRC)])["id"]
    socket_dir = ""
    try:
        record = record_of(crashed)
        (gone,) = [r.session for r in read_records() if r.container_id == crashed]
        socket_dir = plugbay_docker.containers.get(crashed).labels[SOCKET_DIR]
        subprocess.run(["docker", "rm", "-f", crashed], check=True, capture_output=True, timeout=60)
        aged = time.time() - 2 * GRACE
        os.utime(record, (aged, aged))
        for sessions in ([], [f"{gone}0"]):
            spared: dict[str, str] = {}
            assert sweep(client=plugbay_docker, sessions=sessions, spared=spared) == []
            assert record.exists(), f"sweep(sessions={sessions}) dropped another session's record"
            assert spared == {}, spared
        sweep(client=plugbay_docker, sessions=[gone])
        assert not record.exists(), "the record of its own session's container removed by `docker rm -f` stayed"
    finally:
        _remove(plugbay_docker, crashed)
        if socket_dir:
            shutil.rmtree(socket_dir, ignore_errors=True)


def test_a_sweep_of_some_sessions_refuses_to_sweep_the_whole_engines_images_and_networks() -> None:
    # before: sweep(sessions=[...], images=True) swept every image and network of the engine, no session's, which
    # plugbay sweep --session leaves; refused before the engine is asked
    for asked in ({"images": True}, {"networks": True}):
        with pytest.raises(ConfigError, match="images and networks are the whole engine's"):
            sweep(sessions=[HOST_SESSION_ID], client=object(), **asked)
    # the bytes' suggestion is a str (before: [b'x'], which it refuses too)
    with pytest.raises(ConfigError, match=r"not one bytes: pass \['x'\]"):
        sweep(sessions=b"x")  # type: ignore[arg-type]
