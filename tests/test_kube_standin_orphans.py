"""The Kubernetes stand-in's clean-up of a gone stand-in's pod containers and emptyDir folders.

A stand-in killed with SIGKILL (a crashed or killed test run) leaves its pods' containers running and their
emptyDir folders behind; the next stand-in on the engine removes those whose stand-in plugbay's session_gone()
proves gone, and nothing else: not a live stand-in's in another pid namespace, not a container whose labels it
cannot read, not a folder a pod's own labels name. Real containers on the real engine, real processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kube_standin.fixtures import testapp  # noqa: F401
from tests.kube_standin.runtime import OWNER_LABEL, owner_labels, remove_orphans

pytestmark = [pytest.mark.docker]
docker = pytest.importorskip("docker")

SRC = Path(__file__).resolve().parent.parent / "src"
TRIAL = "test.plugbay-standin-orphans"  # this test's own containers, by a tag of each test's


@pytest.fixture
def engine() -> Iterator[Any]:
    try:
        client = docker.from_env(version="auto", timeout=60)
        client.ping()
    except Exception as exc:
        pytest.skip(f"needs a Docker engine: {exc}")
    yield client
    client.close()


@pytest.fixture
def tag(engine: Any) -> Iterator[str]:
    value = uuid.uuid4().hex
    yield value
    for left in engine.containers.list(all=True, filters={"label": f"{TRIAL}={value}"}):
        left.remove(force=True)


def _labelled(engine: Any, image: str, tag: str, labels: dict[str, str]) -> Any:
    return engine.containers.create(image, command=["sleep", "600"], labels={**labels, TRIAL: tag})


def _ids(engine: Any, tag: str) -> set[str]:
    return {c.id for c in engine.containers.list(all=True, filters={"label": f"{TRIAL}={tag}"})}


_SESSION_LABELS = """
import json, sys
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
from tests.kube_standin.runtime import owner_labels
print(json.dumps(owner_labels()), flush=True)
sys.stdin.read()
"""


def test_a_live_standin_in_another_pid_namespace_keeps_its_pod_containers(engine: Any, tag: str,
                                                                          testapp: str) -> None:  # noqa: F811
    # its pid named a process of this /proc's namespace (or none), and its running pods were force-removed
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare(1) and root to start a process in a pid namespace of its own")
    live = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable, "-c",
                             _SESSION_LABELS, str(SRC), str(SRC.parent)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout is not None
        labels = json.loads(live.stdout.readline())
        assert labels[OWNER_LABEL] != owner_labels()[OWNER_LABEL]
        kept = _labelled(engine, testapp, tag, labels)
        remove_orphans(engine)
        assert kept.id in _ids(engine, tag)
    finally:
        assert live.stdin is not None
        live.stdin.close()
        live.wait(timeout=60)
        if live.stdout is not None:
            live.stdout.close()


@pytest.mark.parametrize("owner", ["not-a-session.5", "x.y", "999999999.", "999999999-abcdef012345.1x"])
def test_pod_containers_whose_owner_label_cannot_be_read_are_kept(engine: Any, tag: str, owner: str,
                                                                  testapp: str) -> None:  # noqa: F811
    # an unreadable label proves no stand-in gone: it counted as gone
    kept = _labelled(engine, testapp, tag, {**owner_labels(), OWNER_LABEL: owner})
    remove_orphans(engine)
    assert kept.id in _ids(engine, tag)


def _gone_owner() -> dict[str, str]:
    """The labels of a stand-in process that has ended (its session is proven gone here)."""
    done = subprocess.run([sys.executable, "-c", "import json, sys; sys.path.insert(0, sys.argv[1]);"
                           " sys.path.insert(0, sys.argv[2]); from tests.kube_standin.runtime import owner_labels;"
                           " print(json.dumps(owner_labels()))", str(SRC), str(SRC.parent)],
                          capture_output=True, text=True, timeout=60, check=True)
    labels: dict[str, str] = json.loads(done.stdout)
    return labels


def test_two_standins_starting_at_once_both_start(engine: Any, tag: str) -> None:
    # both found the same orphans; the second removal of a container under way was a 409 ("removal of container
    # ... is already in progress") that only NotFound was caught for, and one stand-in crashed on it
    gone = _gone_owner()
    for _ in range(8):
        _labelled(engine, "plugbay-base:bookworm", tag, gone).start()
    start = threading.Barrier(2)
    failed: list[BaseException] = []

    def standin_start() -> None:
        own = docker.from_env(version="auto", timeout=60)
        try:
            start.wait(timeout=60)
            remove_orphans(own)
        except BaseException as exc:
            failed.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=standin_start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert failed == []
    assert _ids(engine, tag) == set()
