"""A pod's labels on its container in the Kubernetes stand-in: plugbay's namespace (plugbay.*) is not the pod's to
write. A pod labelled plugbay.managed=true had plugbay's own sweep take its container for a runner's, and one
labelled plugbay.standin.emptydir=<folder> named a folder a later stand-in removes. Real containers on the real
engine, an in-process stand-in."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.kube_standin.fixtures import testapp  # noqa: F401
from tests.kube_standin.orphans import EMPTYDIR_LABEL, OWNER_LABEL, owner_labels

pytestmark = [pytest.mark.docker]
docker = pytest.importorskip("docker")


def test_a_pods_plugbay_labels_are_not_its_containers(testapp: str) -> None:  # noqa: F811
    from kubernetes import client, config

    from plugbay.runners.session import MANAGED
    from tests.kube_standin import StandIn

    try:
        engine = docker.from_env(version="auto", timeout=60)
        engine.ping()
    except Exception as exc:
        pytest.skip(f"needs a Docker engine: {exc}")
    try:
        with StandIn(runtime="docker") as standin:
            api = client.CoreV1Api(config.new_client_from_config(config_file=standin.write_kubeconfig()))
            try:
                api.create_namespaced_pod("default", client.V1Pod.from_dict({
                    "metadata": {"name": "forged", "labels": {MANAGED: "true", EMPTYDIR_LABEL: "x", "app": "kept"}},
                    "spec": {"restartPolicy": "Never", "containers": [{"name": "plugin", "image": testapp}]}}))
                found: list[Any] = []
                deadline = time.monotonic() + 60  # a bound for a slow engine, not a timing claim
                while not found and time.monotonic() < deadline:
                    found = engine.containers.list(
                        all=True, filters={"label": ["plugbay.standin.pod=default/forged",
                                                     f"{OWNER_LABEL}={owner_labels()[OWNER_LABEL]}"]})
                    time.sleep(0.1)
                assert len(found) == 1
                labels = found[0].labels
                assert labels.get("app") == "kept"  # the pod's own labels are its container's
                assert MANAGED not in labels and EMPTYDIR_LABEL not in labels
                api.delete_namespaced_pod("forged", "default", grace_period_seconds=0)
            finally:
                api.api_client.close()
    finally:
        engine.close()
