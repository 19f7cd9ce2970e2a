"""A port-forward whose pod is gone forwards nothing more, not even to a pod that took its name.

The API server's port-forward is addressed by pod name. Once the runner's pod (its UID) is deleted and
another pod is created under that name, a new connection to the runner's forward address used to open a
stream to the new pod and read its bytes: the host would send its calls (and client certificate) to a
pod it never started. The in-cluster address refuses a gone pod; the forwarder must as well. The pods
here are local processes on the Kubernetes stand-in.
"""

from __future__ import annotations

import socket
import sys
import time

import pytest

pytest.importorskip("kubernetes")

from plugbay.runners.base import LaunchSpec  # noqa: E402
from plugbay.runners.kubernetes import KubernetesRunner  # noqa: E402
from tests.kube_standin.process_fixtures import process_kubeconfig, process_standin  # noqa: E402,F401 - fixtures
from tests.kube_standin.server import StandIn  # noqa: E402
from tests.thread_util import until  # noqa: E402

pytestmark = pytest.mark.kubernetes

GREETER = """\
import os, socket
host, port = os.environ["PLUGBAY_LISTEN"].split(":", 1)[1].rsplit(":", 1)
listener = socket.create_server((host, int(port)))
print(f"1|1|tcp|{host}:{port}|grpc", flush=True)
while True:
    conn, _ = listener.accept()
    conn.sendall(os.environ["GREETING"].encode() + b"\\n")
    conn.close()
"""


def _read(address: str) -> bytes:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.settimeout(10)
        try:
            return conn.recv(100)
        except OSError:
            return b""


@pytest.mark.timeout(90)
def test_a_new_pod_under_the_runners_pod_name_is_not_forwarded_to(server: StandIn, kubeconfig: str) -> None:
    from kubernetes import client, config

    runner = KubernetesRunner("no-engine/x:1", kubeconfig=kubeconfig, command=[sys.executable, "-c", GREETER],
                              env={"GREETING": "PLUGIN"}, start_timeout=20, api_timeout=5,
                              address_mode="port-forward")
    api_client = config.new_client_from_config(config_file=kubeconfig)
    api = client.CoreV1Api(api_client)
    try:
        runner.start(LaunchSpec(env={}))
        announced = next(iter(runner.stdout_lines())).split("|")[3]
        port = int(announced.rsplit(":", 1)[1])
        _, local = runner.plugin_to_host("tcp", announced)
        assert _read(local) == b"PLUGIN\n"
        name = runner.pod_name
        assert server.delete_pod("default", name)
        assert until(lambda: runner._podwatch.gone, 15), "the runner never saw its pod deleted"
        api.create_namespaced_pod("default", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "plugin", "image": "other/app:1", "command": [sys.executable, "-c", GREETER],
                "ports": [{"containerPort": port}],  # the stand-in forwards it to where the process listens
                "env": [{"name": "GREETING", "value": "STRANGER"},
                        {"name": "PLUGBAY_LISTEN", "value": f"tcp:0.0.0.0:{port}"}]}]}})
        assert until(lambda: api.read_namespaced_pod(name, "default").status.phase == "Running", 20)
        time.sleep(0.5)  # its process listens once it printed; the read below must not race that
        assert _read(local) == b""  # closed: the stranger's greeting never reaches the host
    finally:
        try:
            api.delete_namespaced_pod(runner.pod_name, "default", grace_period_seconds=0)
        except Exception:  # noqa: BLE001 - not created, or gone already
            pass
        api_client.close()
        runner.kill(0)
