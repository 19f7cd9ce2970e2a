"""kubernetes:/// discovery against a real cluster: runs when KUBECONFIG is set, skipped otherwise.

Needs PLUGBAY_KUBE_IMAGE (the KV trap plugin image, see tests/test_kubernetes_cluster.py) and
PLUGBAY_KUBE_NAMESPACE (default "default"); the kubeconfig's user needs the Role of
charts/plugbay with rbac.discovery=true plus services create/delete. PLUGBAY_KUBE_DENIED_KUBECONFIG
names a kubeconfig whose user lacks the endpointslices rule (403 test). Also runs against the
stand-in: ``python -m tests.kube_standin --kubeconfig /tmp/k.yaml`` and KUBECONFIG=/tmp/k.yaml.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence

import pytest

from plugbay.errors import PermissionDeniedError
from plugbay.network.kubernetes import EndpointSliceResolver
from plugbay.network.resolver import Endpoint

KUBECONFIG = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
IMAGE = os.environ.get("PLUGBAY_KUBE_IMAGE", "")
NAMESPACE = os.environ.get("PLUGBAY_KUBE_NAMESPACE", "default")

pytestmark = [
    pytest.mark.kubernetes,
    pytest.mark.skipif(not KUBECONFIG, reason="KUBECONFIG is not set: no real cluster to discover endpoints in"),
    pytest.mark.skipif(bool(KUBECONFIG) and not IMAGE,
                       reason="PLUGBAY_KUBE_IMAGE is not set: the cluster needs a pullable KV plugin image"),
]


class Sets:
    def __init__(self) -> None:
        self.all: list[list[Endpoint]] = []
        self.cond = threading.Condition()

    def __call__(self, endpoints: Sequence[Endpoint]) -> None:
        with self.cond:
            self.all.append(list(endpoints))
            self.cond.notify_all()

    def wait(self, pred: object, timeout: float = 240) -> list[Endpoint]:
        with self.cond:
            assert self.cond.wait_for(lambda: bool(self.all) and pred(self.all[-1]),  # type: ignore[operator]
                                      timeout=timeout), self.all[-3:]
            return self.all[-1]


@pytest.fixture()
def service() -> Iterator[tuple[str, list[str], object]]:
    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(config_file=KUBECONFIG))
    name = f"plugbay-disc-{uuid.uuid4().hex[:6]}"
    labels = {"app": name}
    api.create_namespaced_service(NAMESPACE, client.V1Service.from_dict({
        "metadata": {"name": name},
        "spec": {"selector": labels, "ports": [{"name": "grpc", "port": 4000, "targetPort": "grpc"}]}}))
    pods: list[str] = []

    def add_pod() -> str:
        pod = f"{name}-{len(pods)}"
        api.create_namespaced_pod(NAMESPACE, client.V1Pod.from_dict({
            "metadata": {"name": pod, "labels": labels},
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "plugin", "image": IMAGE, "ports": [{"name": "grpc", "containerPort": 4000}],
                "env": [{"name": "BASIC_PLUGIN", "value": "hello"}, {"name": "PLUGIN_PROTOCOL_VERSIONS", "value": "1"},
                        {"name": "PLUGBAY_LISTEN", "value": "tcp:0.0.0.0:4000"}],
                "readinessProbe": {"tcpSocket": {"port": "grpc"}, "periodSeconds": 2}}]}}))
        pods.append(pod)
        return pod

    try:
        yield name, pods, add_pod
    finally:
        for pod in pods:
            try:
                api.delete_namespaced_pod(pod, NAMESPACE, grace_period_seconds=0)
            except client.ApiException:
                pass
        api.delete_namespaced_service(name, NAMESPACE)
        api.api_client.close()


def _on_loopback(pod: str) -> bool:
    """Whether ``pod`` got a loopback IP: the stand-in's pods do (tests/kube_standin/pods.py, POD_IP: each
    published on its own loopback port), a real cluster's never do."""
    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(config_file=KUBECONFIG))
    deadline = time.monotonic() + 240
    try:
        while not (ip := api.read_namespaced_pod(pod, NAMESPACE).status.pod_ip):
            assert time.monotonic() < deadline, f"pod {pod} got no IP in 240 s"
            time.sleep(0.5)
    finally:
        api.api_client.close()
    return ipaddress.ip_address(ip).is_loopback


def test_endpoints_follow_pods(service: tuple[str, list[str], object]) -> None:
    from kubernetes import client, config

    name, pods, add_pod = service
    add_pod()  # type: ignore[operator]
    add_pod()  # type: ignore[operator]
    sets = Sets()
    # discovery refuses loopback addresses unless told: allowed only where the pods are on loopback (the
    # stand-in), so that against a real cluster this still proves its pod IPs pass the refusal
    loopback = _on_loopback(pods[0])
    with EndpointSliceResolver(NAMESPACE, name, "grpc", allow_loopback=loopback, kubeconfig=KUBECONFIG) as resolver:
        resolver.start(sets)
        both = sets.wait(lambda s: sorted(e.name for e in s if e.ready) == sorted(pods))
        for e in both:  # pod IP and target port; the stand-in publishes each pod on its own loopback port
            assert e.network == "tcp" and (e.address.startswith("127.0.0.1:") or e.address.endswith(":4000")), e
        third = add_pod()  # type: ignore[operator]
        sets.wait(lambda s: third in [e.name for e in s if e.ready])
        api = client.CoreV1Api(config.new_client_from_config(config_file=KUBECONFIG))
        try:
            api.delete_namespaced_pod(pods[0], NAMESPACE, grace_period_seconds=5)
        finally:
            api.api_client.close()
        sets.wait(lambda s: pods[0] not in [e.name for e in s])
        assert resolver.last_error is None and resolver.lists == 1


@pytest.mark.skipif(not os.environ.get("PLUGBAY_KUBE_DENIED_KUBECONFIG"),
                    reason="PLUGBAY_KUBE_DENIED_KUBECONFIG is not set: no user without the endpointslices rule")
def test_forbidden_names_the_rule() -> None:
    resolver = EndpointSliceResolver(NAMESPACE, "anything", "grpc",
                                     kubeconfig=os.environ["PLUGBAY_KUBE_DENIED_KUBECONFIG"])
    with pytest.raises(PermissionDeniedError, match="endpointslices: list, watch"):
        resolver.start(Sets())
    resolver.close()
