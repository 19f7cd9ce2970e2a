"""Plugin pods: AutoMTLS by default, owned by the in-cluster host's pod, swept by host identity.

On the API stand-in (real kubeconfig, pods run as real containers). The host's
downward-API environment (POD_NAME, POD_UID, POD_NAMESPACE) is set the way
charts/plugbay sets it for a host running in a pod.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import Client, ClientConfig, ConfigError  # noqa: E402
from plugbay.runners.base import LaunchSpec  # noqa: E402
from plugbay.runners.kubernetes import KubernetesRunner, sweep  # noqa: E402
from tests.kube_standin.fixtures import kubeconfig, kvtrap, standin, testapp  # noqa: E402,F401

pytestmark = pytest.mark.kubernetes
SPEC = LaunchSpec(env={"BASIC_PLUGIN": "hello"}, labels={"plugbay.plugin": "testapp"})


def _pod(kubeconfig: str, name: str) -> Any:
    api = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    try:
        return api.api_client.sanitize_for_serialization(api.read_namespaced_pod(name, "default"))
    finally:
        api.api_client.close()


def test_pods_use_automtls_and_require_it_by_default(kubeconfig: str, kvtrap: str) -> None:  # noqa: F811
    runner = KubernetesRunner(kvtrap, kubeconfig=kubeconfig, writable_dirs=("/tmp", "/data"))
    assert not runner.private_transport
    with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner,
                             start_timeout=60)) as client_:
        assert client_.handshake.server_cert is not None  # the plugin was handed a client cert
        assert client_.connection_mode == "grpc-tls"
        kv = client_.dispense(PLUGIN_NAME)
        kv.put("k", b"over tls")
        assert kv.get("k") == b"over tls"


def test_in_cluster_host_owns_its_plugin_pods(kubeconfig: str, testapp: str,  # noqa: F811
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    uid = str(uuid.uuid4())
    monkeypatch.setenv("POD_NAME", "my-host-0")
    monkeypatch.setenv("POD_UID", uid)
    monkeypatch.setenv("POD_NAMESPACE", "default")
    monkeypatch.delenv("PLUGBAY_HOST_ID", raising=False)
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig, start_timeout=60)
    runner.start(SPEC)
    try:
        meta = _pod(kubeconfig, runner.pod_name)["metadata"]
    finally:
        runner.kill(0)
    assert meta["ownerReferences"] == [{"apiVersion": "v1", "kind": "Pod", "name": "my-host-0", "uid": uid,
                                        "controller": False, "blockOwnerDeletion": False}]
    assert meta["labels"]["plugbay.host-id"] == uid
    # a host pod in another namespace cannot own it (the collector would delete it at once)
    monkeypatch.setenv("POD_NAMESPACE", "elsewhere")
    other = KubernetesRunner(testapp, kubeconfig=kubeconfig, start_timeout=60, host_id="host-a")
    other.start(SPEC)
    try:
        meta = _pod(kubeconfig, other.pod_name)["metadata"]
    finally:
        other.kill(0)
    assert not meta.get("ownerReferences") and meta["labels"]["plugbay.host-id"] == "host-a"


def test_sweep_by_host_identity_survives_a_host_restart(kubeconfig: str, testapp: str) -> None:  # noqa: F811
    identity = f"host-{uuid.uuid4().hex[:8]}"
    live = KubernetesRunner(testapp, kubeconfig=kubeconfig, start_timeout=60, host_id=identity)
    live.start(SPEC)
    api = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    # what the host's previous container left: same identity, another session whose pid (1)
    # is alive in the restarted container, so a hostname+pid check would keep it forever
    left = {"metadata": {"name": f"plugbay-left-{identity}", "labels": {
        "plugbay.managed": "true", "plugbay.session": "1-0123456789ab", "plugbay.host-id": identity},
        "annotations": {"plugbay.host": "old-host-pod"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "plugin", "image": testapp}]}}
    try:
        api.create_namespaced_pod("default", client.V1Pod.from_dict(left))
        assert sweep("default", kubeconfig=kubeconfig) == []  # without the identity: not provably gone
        assert sweep("default", kubeconfig=kubeconfig, host_id=identity) == [f"plugbay-left-{identity}"]
        assert live.wait(0) is None  # this session's own pod stays
    finally:
        live.kill(0)
        api.api_client.close()
    with pytest.raises(ConfigError, match="not a valid label value"):
        KubernetesRunner(testapp, kubeconfig=kubeconfig, host_id="bad id!")


SIBLING_SWEEP = """
import json, sys
sys.path.insert(0, sys.argv[1])
from plugbay.runners.kubernetes import sweep
print(json.dumps(sweep("default", kubeconfig=sys.argv[2], host_id=sys.argv[3], dry_run=True)))
"""


def test_sweep_by_host_identity_spares_a_live_sibling_session(kubeconfig: str, testapp: str) -> None:  # noqa: F811
    """Two live hosts of one identity (a pre-forking server's workers: a forked process is a session
    of its own, with the pod's POD_UID): one's sweep must not take the other's pods for leftovers."""
    import json
    import subprocess

    identity = f"host-{uuid.uuid4().hex[:8]}"
    live = KubernetesRunner(testapp, kubeconfig=kubeconfig, start_timeout=60, host_id=identity)
    live.start(SPEC)
    try:
        out = subprocess.run([sys.executable, "-c", SIBLING_SWEEP, str(REPO / "src"), kubeconfig, identity],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        assert json.loads(out) == []  # this process (its sibling) still runs: its pod is not a leftover
        assert live.wait(0) is None
    finally:
        live.kill(0)
