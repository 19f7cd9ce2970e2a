"""Where an in-cluster host dials a pod: a hostPort's ``hostIP`` is the node's bind address, not where to dial.

The API server keeps a pod template's ``ports[].hostIP`` as given; the unspecified ones (0.0.0.0, ::, none)
bind every node address, and dialled they are the host's own machine. The node's address is
``status.hostIP``. (The stand-in reports every port with its own hostIP, so these pods are shaped here.)
"""

from __future__ import annotations

from typing import Any

import pytest

from plugbay.errors import RunnerError
from plugbay.runners.kubernetes.podaddress import pod_address


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


def _plain(status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "plugin-abc"}, "spec": {"containers": [{"name": "plugin"}]},
            "status": {"phase": "Running", **status}}


@pytest.mark.parametrize(("ip", "why"), [
    ("169.254.169.254", "link-local"), ("::ffff:169.254.169.254", "link-local"), ("0.0.0.0", "unspecified"),
    ("224.0.0.1", "multicast"), ("fe80::1%eth0", "zone index"),
    ("127.0.0.1", "loopback"), ("::1", "loopback"),
    ("metadata.google.internal", "no IP address"), ("10.0.0.1:99", "no IP address"), (["10.0.0.1"], "no IP"),
])
def test_a_pod_ip_that_is_no_pods_address_is_refused(ip: Any, why: str) -> None:
    # the API's answer is input: a name (resolved at the dial), cloud metadata or this host's own services
    # must not become the address the host dials and sends its calls (and client certificate) to
    with pytest.raises(RunnerError, match=why):
        pod_address(_plain({"podIP": ip}), 4000, "default/plugin-abc")


@pytest.mark.parametrize(("ip", "why"), [
    ("fd00:ec2::254", r"cannot be a pod's \(fd00:ec2::/64 is AWS's instance metadata"),
    ("fd00:ec2::123", "fd00:ec2::/64"),
    ("64:ff9b::a9fe:a9fe", r"carries the IPv4 address 169\.254\.169\.254 \(NAT64, 64:ff9b::/96\), which cannot be"
                           " a pod's"),
    ("2002:a9fe:a9fe::1", r"carries the IPv4 address 169\.254\.169\.254 \(6to4, 2002::/16\), which cannot be a"
                          " pod's"),
    ("64:ff9b::7f00:1", r"carries the IPv4 address 127\.0\.0\.1 \(NAT64.*loopback"),
])
def test_cloud_metadata_in_its_ipv6_forms_is_no_pods_address(ip: str, why: str) -> None:
    # discovery refused these as replicas while the runner dialled them as pod and node IPs: AWS's IPv6
    # metadata service, and 169.254.169.254 reached through a NAT64 translator or a 6to4 relay
    with pytest.raises(RunnerError, match=why):
        pod_address(_plain({"podIP": ip}), 4000, "default/plugin-abc")
    with pytest.raises(RunnerError, match=why):
        pod_address(_pod({}, {"hostIP": ip}), 4000, "default/plugin-abc")


@pytest.mark.parametrize(("ip", "why"), [
    ("168.63.129.16", r"cannot be a pod's \(168\.63\.129\.16 is Azure's wire server"),
    ("100.100.100.200", r"cannot be a pod's \(100\.100\.100\.200 is Alibaba Cloud's instance metadata"),
    ("::ffff:168.63.129.16", "Azure's wire server"),
    ("64:ff9b::a83f:8110", r"carries the IPv4 address 168\.63\.129\.16 \(NAT64, 64:ff9b::/96\), which cannot be a"
                           " pod's"),
    ("64:ff9b:1::a9fe:a9fe", r"carries the IPv4 address 169\.254\.169\.254 \(local-use NAT64, 64:ff9b:1::/48\),"
                             " which cannot be a pod's"),
    ("64:ff9b:1:2:3:4:6464:64c8", r"carries the IPv4 address 100\.100\.100\.200 \(local-use NAT64.*Alibaba"),
    ("64:ff9b:1::7f00:1", r"carries the IPv4 address 127\.0\.0\.1 \(local-use NAT64.*loopback"),
    ("::a9fe:a9fe", r"carries the IPv4 address 169\.254\.169\.254 \(IPv4-compatible, ::/96\), which cannot be a"
                    " pod's"),
    ("::127.0.0.1", r"carries the IPv4 address 127\.0\.0\.1 \(IPv4-compatible.*loopback"),
    # Teredo: the client's address is 169.254.169.254 (stored inverted), and a Teredo address is refused
    # whatever it carries
    ("2001:0:4136:e378:8000:63bf:5601:5601", r"cannot be a pod's \(Teredo, 2001::/32"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", r"cannot be a pod's \(Teredo, 2001::/32"),
])
def test_other_clouds_metadata_and_more_ipv4_carrying_forms_are_no_pods_address(ip: str, why: str) -> None:
    # Azure's wire server and Alibaba Cloud's metadata are neither link-local nor private; an IPv4 address
    # reaches a translator or relay through the local-use NAT64 prefix and the IPv4-compatible form too
    with pytest.raises(RunnerError, match=why):
        pod_address(_plain({"podIP": ip}), 4000, "default/plugin-abc")
    with pytest.raises(RunnerError, match=why):
        pod_address(_pod({}, {"hostIP": ip}), 4000, "default/plugin-abc")


def test_only_alibabas_metadata_address_is_refused_in_the_shared_address_space() -> None:
    # 100.64.0.0/10 carries pod addresses on some clusters; IPv6 keeps its own :: and ::1
    for ip in ["100.100.100.199", "100.100.100.201", "100.64.0.7", "168.63.129.17", "64:ff9b:1::a00:1",
               "::a00:1", "2001:db8::1"]:
        assert pod_address(_plain({"podIP": ip}), 4000, "d/p") in (f"{ip}:4000", f"[{ip}]:4000")
    with pytest.raises(RunnerError, match="unspecified"):
        pod_address(_plain({"podIP": "::"}), 4000, "d/p")
    with pytest.raises(RunnerError, match=r"is a loopback address, this host's own"):
        pod_address(_plain({"podIP": "::1"}), 4000, "d/p")
    assert pod_address(_plain({"podIP": "::1"}), 4000, "d/p", allow_loopback=True) == "[::1]:4000"


def test_a_loopback_address_behind_nat64_takes_the_loopback_opt_in() -> None:
    pod = _plain({"podIP": "64:ff9b::7f00:1"})
    assert pod_address(pod, 4000, "d/p", allow_loopback=True) == "[64:ff9b::7f00:1]:4000"


def test_a_node_ip_is_checked_as_a_pod_ip_is() -> None:
    with pytest.raises(RunnerError, match="link-local"):
        pod_address(_pod({}, {"hostIP": "169.254.169.254"}), 4000, "default/plugin-abc")
    with pytest.raises(RunnerError, match="no IP address"):
        pod_address(_pod({"hostIP": "node-7.internal"}, {"hostIP": "10.0.0.7"}), 4000, "default/plugin-abc")
    with pytest.raises(RunnerError, match="no TCP port"):
        pod_address(_pod({"hostPort": "30400"}, {"hostIP": "10.0.0.7"}), 4000, "default/plugin-abc")


def test_pod_ips_dialled_as_they_are() -> None:
    assert pod_address(_plain({"podIP": "10.244.1.5"}), 4000, "d/p") == "10.244.1.5:4000"
    assert pod_address(_plain({"podIP": "fd00::5"}), 4000, "d/p") == "[fd00::5]:4000"
    # a stand-in that runs pods on this machine: the runner's allow_loopback opts in
    assert pod_address(_plain({"podIP": "127.0.0.1"}), 4000, "d/p", allow_loopback=True) == "127.0.0.1:4000"
