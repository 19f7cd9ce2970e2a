"""The sweep removes a container only when plugbay can prove it made it: a container whose labels name a dead
host session (forged, or copied as `docker commit` copies them) is left alone, and the container a crashed
host's runner created is still swept."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from docker.errors import NotFound

from plugbay.runners.docker import sweep
from plugbay.runners.docker.madehere import forget_made, made_here
from tests.cli_util import plugbay
from tests.procs import first_line_then_sigkill

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
        removed = sweep()
        assert crashed in removed and forged not in removed
        assert plugbay_docker.containers.get(forged).status == "running", "swept what it did not make"
        with pytest.raises(NotFound):
            plugbay_docker.containers.get(crashed)
        assert not made_here(crashed)  # the record went with its container
    finally:
        for container_id in (crashed, forged):
            if container_id:
                _remove(plugbay_docker, container_id)
