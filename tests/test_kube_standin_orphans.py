"""The Kubernetes stand-in's clean-up of a gone stand-in's pod containers and emptyDir folders.

A stand-in killed with SIGKILL (a crashed or killed test run) leaves its pods' containers running and their
emptyDir folders behind; the next stand-in on the engine removes those whose stand-in plugbay's session_gone()
proves gone, and nothing else: not a live stand-in's in another pid namespace, not a container whose labels it
cannot read, not a folder a pod's own labels name. Real containers on the real engine, real processes."""

from __future__ import annotations

import contextlib
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
from tests.kube_standin.orphans import EMPTYDIR_LABEL, OWNER_LABEL, owner_labels, remove_orphans

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
from tests.kube_standin.orphans import owner_labels
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
                           " sys.path.insert(0, sys.argv[2]); from tests.kube_standin.orphans import owner_labels;"
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


def _killed_standins_containers(engine: Any, killed: Any, pod: str) -> list[Any]:
    """The pod's container that the stand-in ``killed`` made: by its owner label too (the pod's name alone would
    pick a concurrent run's)."""
    from plugbay.runners.session import HOST_PIDS, host_pids

    assert killed._proc is not None
    found = engine.containers.list(all=True, filters={"label": f"plugbay.standin.pod=default/{pod}"})
    return [c for c in found if (c.labels.get(OWNER_LABEL) or "").startswith(f"{killed._proc.pid}-")
            and c.labels.get(HOST_PIDS) == host_pids()]


def _orphan_pod(engine: Any, image: str, pod: str, labels: dict[str, str], empty_dir: bool) -> tuple[Any, Any]:
    """(the killed stand-in, its pod's container left running): a pod made through a stand-in process, then
    that process killed with SIGKILL."""
    import signal
    import time

    from kubernetes import client, config

    from tests.kube_standin.separate import SeparateStandIn

    killed = SeparateStandIn(runtime="docker").start()
    try:
        api = client.CoreV1Api(config.new_client_from_config(config_file=killed.kubeconfig))
        container: dict[str, Any] = {"name": "plugin", "image": image}
        spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
        if empty_dir:
            spec["volumes"] = [{"name": "scratch", "emptyDir": {}}]
            container["volumeMounts"] = [{"name": "scratch", "mountPath": "/scratch"}]
        found: list[Any] = []
        try:
            api.create_namespaced_pod("default", client.V1Pod.from_dict(
                {"metadata": {"name": pod, "labels": labels}, "spec": spec}))
            deadline = time.monotonic() + 60  # a bound for a slow engine, not a timing claim
            while not found and time.monotonic() < deadline:
                found = _killed_standins_containers(engine, killed, pod)
                time.sleep(0.1)
        finally:
            api.api_client.close()
        assert len(found) == 1
        assert killed._proc is not None
        killed._proc.send_signal(signal.SIGKILL)
        killed._proc.wait()
        return killed, found[0]
    except BaseException:
        for left in _killed_standins_containers(engine, killed, pod):
            left.remove(force=True)
        killed.stop()
        raise


@contextlib.contextmanager
def _orphaned(engine: Any, image: str, pod: str, labels: dict[str, str],
              empty_dir: bool) -> Iterator[tuple[Any, Any]]:
    """_orphan_pod's pair, its container removed and its stand-in's leftovers stopped at the block's end."""
    killed, orphan = _orphan_pod(engine, image, pod, labels, empty_dir)
    try:
        yield killed, orphan
    finally:
        try:
            orphan.remove(force=True)
        except docker.errors.NotFound:
            pass
        killed.stop()


def test_a_pod_labelled_with_another_pods_emptydir_folder_does_not_get_it_removed(
        engine: Any, testapp: str) -> None:  # noqa: F811
    # a pod's own labels became its container's: one labelled plugbay.standin.emptydir=<another live pod's
    # folder> had the next stand-in remove that folder once the pod's own stand-in was gone
    import tempfile

    from tests.kube_standin import StandIn

    victim = tempfile.mkdtemp(prefix="plugbay-standin-emptydir-")  # as a live pod's, of a stand-in still running
    try:
        with _orphaned(engine, testapp, "claims", {EMPTYDIR_LABEL: victim}, empty_dir=False) as (_, orphan):
            with StandIn(runtime="docker"):  # the next stand-in
                assert engine.containers.list(all=True, filters={"id": orphan.id}) == []
            assert os.path.isdir(victim)
    finally:
        shutil.rmtree(victim, ignore_errors=True)


def test_a_folder_is_removed_only_when_the_containers_own_bind_mounts_are_in_it(engine: Any, tag: str) -> None:
    # the emptyDir label alone named the folder to remove: a container labelled so by anything on the engine
    import tempfile

    victim = tempfile.mkdtemp(prefix="plugbay-standin-emptydir-")
    try:
        orphan = _labelled(engine, "plugbay-base:bookworm", tag, {**_gone_owner(), EMPTYDIR_LABEL: victim})
        assert orphan.id in remove_orphans(engine)
        assert os.path.isdir(victim)
    finally:
        shutil.rmtree(victim, ignore_errors=True)


def test_a_killed_standins_folder_in_another_runs_temp_folder_is_removed(engine: Any, testapp: str,  # noqa: F811
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # each test run has TMPDIR=/tmp/plugbay-test-<pid> (tests/leakcheck.py): a folder was removed only when in
    # the next stand-in's own temp folder, so a killed run's were never
    from tests.kube_standin import StandIn

    other_run = f"/tmp/plugbay-test-{uuid.uuid4().int % 10 ** 12}"
    os.mkdir(other_run, 0o700)
    try:
        with contextlib.ExitStack() as left:
            with monkeypatch.context() as env:  # the killed stand-in's temp folder only
                env.setenv("TMPDIR", other_run)
                _, orphan = left.enter_context(_orphaned(engine, testapp, "elsewhere", {}, empty_dir=True))
            scratch = orphan.labels.get(EMPTYDIR_LABEL, "")
            assert os.path.dirname(scratch) == other_run and os.path.isdir(scratch)
            with StandIn(runtime="docker"):  # the next stand-in, in this run's temp folder
                assert engine.containers.list(all=True, filters={"id": orphan.id}) == []
            assert not os.path.exists(scratch)
    finally:
        shutil.rmtree(other_run, ignore_errors=True)


def test_a_standin_removes_the_pod_containers_of_one_that_was_killed(engine: Any, testapp: str) -> None:  # noqa: F811
    # a stand-in killed with SIGKILL (a crashed or killed test run) left its pods' containers running and their
    # emptyDir folders behind, which nothing removed: no API answers for them, and plugbay's sweep cannot prove
    # a container it did not create its own. Its container is found by the killed stand-in's owner label: by the
    # pod's name alone a concurrent run's could be picked (and force-removed)
    import tempfile

    from tests.kube_standin import StandIn

    with _orphaned(engine, testapp, "orphan", {}, empty_dir=True) as (_, orphan):
        assert engine.containers.list(filters={"id": orphan.id})  # left running
        scratch = orphan.labels.get(EMPTYDIR_LABEL, "")
        assert os.path.dirname(scratch) == tempfile.gettempdir() and os.path.isdir(scratch)
        with StandIn(runtime="docker"):  # the next stand-in, in another (this) process
            assert engine.containers.list(all=True, filters={"id": orphan.id}) == []
            assert not os.path.exists(scratch)


@pytest.mark.parametrize("runner", [True, False], ids=["runner-labels", "session-labels-only"])
def test_an_owner_label_from_the_image_does_not_get_a_live_hosts_container_removed(engine: Any, tag: str,
                                                                                 runner: bool) -> None:
    # the engine merges an image's LABELs into its containers' labels: an image labelled with a gone stand-in's
    # owner had the next stand-in force-remove a live host's container made from it (its host, pid namespace and
    # machine labels this machine's, the owner label's process ended)
    import io

    from plugbay.runners.session import MANAGED, managed_labels

    image = f"plugbay-test-forged-owner:{tag}"
    forged = _gone_owner()[OWNER_LABEL]
    engine.images.build(fileobj=io.BytesIO(f'FROM plugbay-base:bookworm\nLABEL {OWNER_LABEL}="{forged}"\n'.encode()),
                        tag=image, rm=True, pull=False)
    try:
        labels = managed_labels() if runner else {k: v for k, v in managed_labels().items() if k != MANAGED}
        live = _labelled(engine, image, tag, labels)
        assert live.labels[OWNER_LABEL] == forged  # as the engine reports it: the image's label merged in
        remove_orphans(engine)
        assert live.id in _ids(engine, tag)
    finally:
        for left in engine.containers.list(all=True, filters={"label": f"{TRIAL}={tag}"}):
            left.remove(force=True)
        engine.images.remove(image, noprune=False)


def test_a_container_removed_between_list_and_inspect_does_not_stop_a_standin(
        engine: Any, tag: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # docker-py's containers.list() inspects each listed container: one another stand-in removed in between raised
    # NotFound out of remove_orphans, and this stand-in did not start. The removal is made real, on the engine,
    # right after the listing answered
    gone = _gone_owner()
    raced = _labelled(engine, "plugbay-base:bookworm", tag, gone)
    orphan = _labelled(engine, "plugbay-base:bookworm", tag, gone)
    listing = engine.api.containers

    def list_then_remove(*args: Any, **kwargs: Any) -> Any:
        listed = listing(*args, **kwargs)
        engine.api.remove_container(raced.id, force=True)  # as another stand-in starting at once would
        return listed

    monkeypatch.setattr(engine.api, "containers", list_then_remove)
    assert orphan.id in remove_orphans(engine)
    monkeypatch.undo()
    assert _ids(engine, tag) == set()


def test_a_pod_container_a_separate_standin_left_is_reported_as_this_runs_leak(engine: Any,
                                                                               testapp: str) -> None:  # noqa: F811
    # the leak check looked for this process's session only: a stand-in in a process of its own labels its pods'
    # containers with its session, so one it left behind (killed) went unreported
    from tests import leakcheck

    with _orphaned(engine, testapp, "unreported", {}, empty_dir=False) as (_, orphan):
        assert any(orphan.short_id in leak for leak in leakcheck._docker_leaks())


@pytest.mark.parametrize("folder", ["writable-by-others", "another-users"])
def test_a_folder_in_a_run_folder_not_this_users_alone_is_kept(engine: Any, tag: str, folder: str) -> None:
    # any /tmp/plugbay-test-<digits> was taken for a test run's temp folder: one anyone can make, or write in
    other_run = f"/tmp/plugbay-test-{uuid.uuid4().int % 10 ** 12}"
    os.mkdir(other_run, 0o700)
    try:
        if folder == "another-users":
            if os.geteuid() != 0:
                pytest.skip("needs root to make a folder another user owns")
            os.chown(other_run, 65534, 65534)
        else:
            os.chmod(other_run, 0o777)
        scratch = os.path.join(other_run, "plugbay-standin-emptydir-victim")
        os.makedirs(os.path.join(scratch, "0"))
        orphan = engine.containers.create("plugbay-base:bookworm", command=["sleep", "600"],
                                          labels={**_gone_owner(), EMPTYDIR_LABEL: scratch, TRIAL: tag},
                                          volumes={os.path.join(scratch, "0"): {"bind": "/scratch", "mode": "rw"}})
        assert orphan.id in remove_orphans(engine)
        assert os.path.isdir(scratch)
    finally:
        shutil.rmtree(other_run, ignore_errors=True)
