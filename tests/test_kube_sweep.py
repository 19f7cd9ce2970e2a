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
