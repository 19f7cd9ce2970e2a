"""Where an in-cluster host dials a pod: a hostPort's ``hostIP`` is the node's bind address, not where to dial.

The API server keeps a pod template's ``ports[].hostIP`` as given; the unspecified ones (0.0.0.0, ::, none)
bind every node address, and dialled they are the host's own machine. The node's address is
``status.hostIP``. (The stand-in reports every port with its own hostIP, so these pods are shaped here.)
"""

from __future__ import annotations

from typing import Any

import pytest

from plugbay.errors import RunnerError
from plugbay.runners.kubernetes.pods import pod_address


def _pod(port: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plugin-abc", "namespace": "default"},
            "spec": {"nodeName": "node-7", "containers": [{"name": "plugin", "image": "kv:1", "ports": [
                {"containerPort": 4000, "protocol": "TCP", "hostPort": 30400, **port}]}]},
            "status": {"phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}], **status}}


@pytest.mark.parametrize("bind", [{"hostIP": "0.0.0.0"}, {"hostIP": "::"}, {"hostIP": ""}, {}])
def test_an_unspecified_host_ip_dials_the_nodes_address(bind: dict[str, Any]) -> None:
    status = {"hostIP": "10.0.0.7", "hostIPs": [{"ip": "10.0.0.7"}]}
    assert pod_address(_pod(bind, status), 4000, "default/plugin-abc") == "10.0.0.7:30400"
    assert pod_address(_pod(bind, {"hostIP": "fd00::7"}), 4000, "default/plugin-abc") == "[fd00::7]:30400"


def test_a_host_ip_the_template_names_is_dialled() -> None:
    pod = _pod({"hostIP": "10.0.0.9"}, {"hostIP": "10.0.0.7"})
    assert pod_address(pod, 4000, "default/plugin-abc") == "10.0.0.9:30400"


def test_a_host_port_on_a_pod_without_a_node_address_is_a_runner_error() -> None:
    with pytest.raises(RunnerError, match="no node IP yet"):
        pod_address(_pod({"hostIP": "0.0.0.0"}, {"phase": "Pending"}), 4000, "default/plugin-abc")
