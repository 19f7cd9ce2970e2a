"""The Kubernetes sweep deletes only the pods it listed: a pod that took a listed pod's name is left alone.

Against a private stand-in on 127.0.0.1 (its pods are local processes; an explicit api_client).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("kubernetes")

from kubernetes import client, config  # noqa: E402

from plugbay.runners.kubernetes.sweep import sweep  # noqa: E402
from tests.kube_standin.server import StandIn  # noqa: E402

pytestmark = pytest.mark.kubernetes
NAME = "plugbay-kv-0123456789ab"


@pytest.fixture()
def server() -> Iterator[StandIn]:
    standin = StandIn(runtime="process").start()
    try:
        yield standin
    finally:
        standin.stop()


def _pod(labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": NAME, "labels": labels},
            "spec": {"containers": [{"name": "plugin", "image": "x/y:1",
                                     "command": [sys.executable, "-c", "import time; time.sleep(60)"]}]}}


@pytest.mark.timeout(60)
def test_a_pod_that_took_a_swept_pods_name_is_not_deleted(server: StandIn, tmp_path: Path) -> None:
    """The sweep listed a plugbay pod, then deleted by name: a stranger that took the name in between went."""
    api_client = config.new_client_from_config(server.write_kubeconfig(str(tmp_path / "kubeconfig.yaml")))
    api = client.CoreV1Api(api_client)
    try:
        api.create_namespaced_pod("default", _pod({"plugbay.managed": "true", "plugbay.session": "dead-session"}))
        server.hold("delete", "pods")  # the sweep's delete is answered late
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["removed"] = sweep("default", live_sessions=[], api_client=api_client, api_timeout=10)
            except Exception as exc:  # noqa: BLE001 - asserted below
                result["error"] = exc

        swept = threading.Thread(target=run)
        swept.start()
        assert server.holding.wait(10)
        server.held.clear()  # this test's own calls go through
        api.delete_namespaced_pod(NAME, "default", grace_period_seconds=0)
        assert _gone(server)  # before the stranger's create, which the name would refuse
        stranger = api.create_namespaced_pod("default", _pod({"app": "not-plugbay"}))
        server.release()
        swept.join(20)
        assert result == {"removed": []}
        left = api.read_namespaced_pod(NAME, "default")
        assert left.metadata.uid == stranger.metadata.uid and left.metadata.deletion_timestamp is None
    finally:
        server.release()
        try:
            api.delete_namespaced_pod(NAME, "default", grace_period_seconds=0)
        except client.ApiException:
            pass
        api_client.close()


def _gone(server: StandIn) -> bool:
    deadline = time.monotonic() + 10
    while server.store.get("default", NAME) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    return server.store.get("default", NAME) is None


def _deletion_events(server: StandIn, api_client: object, **kwargs: object) -> list[tuple[str, int | None]]:
    """Sweep a plugbay pod of a gone session; its watch events that carry a deletion, until DELETED:
    (type, metadata.deletionGracePeriodSeconds). Status changes before are left out."""
    api = client.CoreV1Api(api_client)
    api.create_namespaced_pod("default", _pod({"plugbay.managed": "true", "plugbay.session": "dead-session"}))
    watcher = server.store.watch("default", "", f"metadata.name={NAME}")
    try:
        assert watcher.events.get(timeout=5)[0] == "ADDED"  # type: ignore[index]
        assert sweep("default", live_sessions=[], api_client=api_client, api_timeout=10, **kwargs) == [NAME]
        seen: list[tuple[str, int | None]] = []
        while not seen or seen[-1][0] != "DELETED":
            item = watcher.events.get(timeout=15)
            assert item is not None
            seen.append((item[0], item[1]["metadata"].get("deletionGracePeriodSeconds")))
        return [event for event in seen if event[1] is not None]
    finally:
        server.store.unwatch(watcher)


@pytest.mark.timeout(60)
def test_the_sweep_deletes_gracefully_unless_forced(server: StandIn, tmp_path: Path) -> None:
    """The sweep sent gracePeriodSeconds=0, the API's force delete: the pod object went at once while its
    container could still run. It sends at least 1 s, as the runner's kill() does; force=True sends 0."""
    api_client = config.new_client_from_config(server.write_kubeconfig(str(tmp_path / "kubeconfig.yaml")))
    try:
        graceful = _deletion_events(server, api_client)
        assert graceful[0] == ("MODIFIED", 1) and graceful[-1] == ("DELETED", 1)  # terminating first
        assert _deletion_events(server, api_client, force=True) == [("DELETED", 0)]
    finally:
        api_client.close()


@pytest.mark.timeout(60)
def test_another_machine_of_the_same_name_is_no_earlier_boot_of_this_one(server: StandIn, tmp_path: Path) -> None:
    """Pods of this machine's name and another boot id were all deleted, as pods of an earlier boot of this
    machine: those of a live host on another machine with the same name (a common default) went too. Another
    boot is this machine's only when the pod names this machine's identity; labels without it are left."""
    import socket
    import uuid

    from plugbay.runners.session import HOST_PIDS, MACHINE, host_pids, machine_identity

    api_client = config.new_client_from_config(server.write_kubeconfig(str(tmp_path / "kubeconfig.yaml")))
    api = client.CoreV1Api(api_client)
    other_boot = f"{uuid.uuid4()}.{host_pids().split('.', 1)[1]}"  # the initial pid namespace: same inode anywhere
    machines = {"plugbay-kv-other-machine": "0" * 32, "plugbay-kv-old-labels": None,
                "plugbay-kv-earlier-boot": machine_identity()}
    try:
        for name, machine in machines.items():
            labels = {"plugbay.managed": "true", "plugbay.session": "4242-0123456789ab", HOST_PIDS: other_boot,
                      **({MACHINE: machine} if machine is not None else {})}
            body = _pod(labels)
            body["metadata"].update(name=name, annotations={"plugbay.host": socket.gethostname()})
            api.create_namespaced_pod("default", body)
        swept = sweep("default", api_client=api_client, api_timeout=10, force=True)
        assert swept == (["plugbay-kv-earlier-boot"] if machine_identity() else [])
        for name in ("plugbay-kv-other-machine", "plugbay-kv-old-labels"):
            assert server.store.get("default", name) is not None
    finally:
        for name in machines:
            if server.store.get("default", name) is not None:
                server.delete_pod("default", name, 0)
        api_client.close()


def test_the_machine_identity_is_a_hash_not_the_machine_id() -> None:
    from plugbay.runners.session import MACHINE, machine_identity, managed_labels

    identity = machine_identity()
    assert managed_labels()[MACHINE] == identity
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path) as f:
                raw = f.read().strip()
        except OSError:
            continue
        assert raw not in identity and (identity == "" or len(identity) == 32)
        if len(raw) == 32:
            assert len(identity) == 32 and int(identity, 16) >= 0
        break


def test_session_gone_takes_another_boot_for_this_machines_only_with_its_identity() -> None:
    """What both sweeps (pods, and the Docker runner's containers) go by."""
    import socket
    import uuid

    from plugbay.runners.session import host_pids, machine_identity, session_gone

    here, other_boot = socket.gethostname(), f"{uuid.uuid4()}.{host_pids().split('.', 1)[1]}"
    mine = machine_identity()
    assert not session_gone(here, other_boot, "4242-0123456789ab", "1")  # labels of an earlier release
    assert not session_gone(here, other_boot, "4242-0123456789ab", "1", "0" * 32)  # another machine
    assert not session_gone(here, other_boot, "4242-0123456789ab", "1", "")
    assert session_gone(here, other_boot, "4242-0123456789ab", "1", mine) is bool(mine)
    assert not session_gone("elsewhere", other_boot, "4242-0123456789ab", "1", mine)


@pytest.mark.timeout(60)
def test_a_404_page_on_the_sweeps_delete_is_no_proof_the_pod_is_gone(server: StandIn, tmp_path: Path) -> None:
    """Only the API server's NotFound naming the pod says it went; a proxy's '404 page not found'
    deleted nothing, and the sweep says so rather than reporting nothing while the pod runs."""
    from plugbay.errors import RunnerError

    api_client = config.new_client_from_config(server.write_kubeconfig(str(tmp_path / "kubeconfig.yaml")))
    try:
        api = client.CoreV1Api(api_client)
        api.create_namespaced_pod("default", _pod({"plugbay.managed": "true", "plugbay.session": "dead-session"}))
        server.page_404("delete", "pods")
        with pytest.raises(RunnerError, match=r"404"):
            sweep("default", live_sessions=[], api_client=api_client, api_timeout=10)
        assert server.store.get("default", NAME) is not None
        server.allow_all()
        assert sweep("default", live_sessions=[], api_client=api_client, api_timeout=10) == [NAME]
    finally:
        api_client.close()
