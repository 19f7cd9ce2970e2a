"""The pod scenarios against a real cluster: runs when KUBECONFIG is set, skipped otherwise.

Set PLUGBAY_KUBE_IMAGE to the KV trap plugin image (tests/kube_standin/kvtrap, built with
``tests.kube_standin.images.kvtrap_image()`` and pushed where the cluster can pull it),
PLUGBAY_KUBE_NAMESPACE (default "default"), PLUGBAY_KUBE_IN_CLUSTER=1 when this host can dial
pod IPs, and PLUGBAY_KUBE_DENIED_KUBECONFIG to a kubeconfig whose user lacks the Role (403 test).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import CallTimeoutError, Client, ClientConfig, PluginExitedError  # noqa: E402
from plugbay.errors import ImageNotFoundError, PermissionDeniedError  # noqa: E402
from plugbay.runners.kubernetes import RBAC_RULES, KubernetesRunner  # noqa: E402

KUBECONFIG = os.environ.get("KUBECONFIG", "")
IMAGE = os.environ.get("PLUGBAY_KUBE_IMAGE", "")
NAMESPACE = os.environ.get("PLUGBAY_KUBE_NAMESPACE", "default")

pytestmark = [
    pytest.mark.kubernetes,
    pytest.mark.skipif(not KUBECONFIG, reason="KUBECONFIG is not set: no real cluster to run the pod scenarios on"),
    pytest.mark.skipif(bool(KUBECONFIG) and not IMAGE,
                       reason="PLUGBAY_KUBE_IMAGE is not set: the cluster needs a pullable KV trap plugin image"),
]
WRITABLE = ("/tmp", "/data")


def runner(**kw: Any) -> KubernetesRunner:
    kw.setdefault("writable_dirs", WRITABLE)
    return KubernetesRunner(kw.pop("image", IMAGE), kubeconfig=KUBECONFIG.split(os.pathsep)[0],
                            namespace=NAMESPACE, start_timeout=180, **kw)


def kv_client(r: KubernetesRunner, **kw: Any) -> Client:
    return Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=r,
                               start_timeout=240, **kw))


MODES = ["port-forward"] + (["in-cluster"] if os.environ.get("PLUGBAY_KUBE_IN_CLUSTER") == "1" else [])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("auto_mtls", [False, True])
def test_kv_round_trip(mode: str, auto_mtls: bool) -> None:
    r = runner(address_mode=mode)
    with kv_client(r, auto_mtls=auto_mtls) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("greeting", b"hello from a real pod")
        assert kv.get("greeting") == b"hello from a real pod"
    assert r.wait(60) == 0


def test_image_pull_failure() -> None:
    with pytest.raises(ImageNotFoundError, match="ErrImagePull|ImagePullBackOff"):
        kv_client(runner(image="registry.invalid/plugbay/nope:0")).start()


def test_crash_before_handshake() -> None:
    r = runner(command=["sh", "-c", "echo crashed on purpose >&2; exit 3"])
    with pytest.raises(PluginExitedError, match="crashed on purpose") as info:
        kv_client(r).start()
    assert info.value.exit_code == 3


def test_oom_killed_during_a_call() -> None:
    r = runner(resources={"limits": {"memory": "128Mi"}})
    with kv_client(r, call_timeout=120) as client:
        with pytest.raises(grpc.RpcError):
            client.dispense(PLUGIN_NAME).get("__alloc__")
        assert r.wait(60) == 137
        assert "OOMKilled" in r.diagnose()


def test_pod_deleted_under_the_host() -> None:
    from kubernetes import client as k8s
    from kubernetes import config

    r = runner()
    api = k8s.CoreV1Api(config.new_client_from_config(config_file=KUBECONFIG.split(os.pathsep)[0]))
    try:
        with kv_client(r, call_timeout=120) as client:
            kv = client.dispense(PLUGIN_NAME)
            timer = threading.Timer(1.0, api.delete_namespaced_pod, (r.pod_name, NAMESPACE),
                                    {"grace_period_seconds": 0})
            timer.name = "plugbay-test-delete-pod"
            timer.start()
            try:
                with pytest.raises(grpc.RpcError) as info:
                    kv.get("__hang__")
            finally:
                timer.join(30)
            assert not isinstance(info.value, CallTimeoutError)
            deadline = time.monotonic() + 60
            while not client.exited and time.monotonic() < deadline:
                time.sleep(0.2)
            assert client.exited
    finally:
        api.api_client.close()


@pytest.mark.skipif(not os.environ.get("PLUGBAY_KUBE_DENIED_KUBECONFIG"),
                    reason="PLUGBAY_KUBE_DENIED_KUBECONFIG is not set: no credentials lacking the Role")
def test_forbidden() -> None:
    r = KubernetesRunner(IMAGE, kubeconfig=os.environ["PLUGBAY_KUBE_DENIED_KUBECONFIG"], namespace=NAMESPACE)
    with pytest.raises(PermissionDeniedError) as info:
        kv_client(r).start()
    for resource, verbs in RBAC_RULES:
        assert f"{resource}: {', '.join(verbs)}" in str(info.value)
