"""kubernetes:/// with a port the Service's EndpointSlices do not list: the slices name the ports they do list.

Before, a misspelled port name (or the Service's port number where the slices carry the pod's) gave
an empty endpoint set without a word: a RemoteClient waited out start_timeout and said only
"discovery reports no endpoints". Real pods behind a real Service on the Kubernetes API stand-in.
"""

from __future__ import annotations

import logging

import pytest

from plugbay.errors import HandshakeTimeoutError
from plugbay.network.kubernetes import EndpointSliceResolver
from plugbay.network.remote import RemoteClient, RemoteConfig
from plugbay.network.slices import endpoints_from_slices, port_note
from tests.kube_standin.fixtures import kubeconfig, kvtrap, standin  # noqa: F401
from tests.test_network_kubernetes import HANDSHAKE, KVPlugin, KVService, Recorder, kv_service, ready  # noqa: F401


def test_a_port_no_slice_lists_is_told_with_the_ports_they_list(kv_service: KVService, kubeconfig: str,  # noqa: F811
                                                                caplog: pytest.LogCaptureFixture) -> None:
    kv_service.add_pod("kv-net-a")
    up = Recorder()
    with EndpointSliceResolver("default", "kv", "grpc", allow_loopback=True, kubeconfig=kubeconfig) as resolver:
        resolver.start(up)
        (endpoint,) = up.wait(lambda s: len(ready(s)) == 1)
        assert resolver.empty_note == ""
    port = endpoint.address.rsplit(":", 1)[1]

    caplog.set_level(logging.WARNING, logger="plugbay.network.kubernetes")
    nothing = Recorder()
    with EndpointSliceResolver("default", "kv", "grcp", allow_loopback=True, kubeconfig=kubeconfig) as resolver:
        resolver.start(nothing)
        assert nothing.sets == [[]]
        assert f"port(s) 'grpc' ({port}), none named 'grcp'" in resolver.empty_note
    assert [r for r in caplog.records if "none named 'grcp'" in r.getMessage()]

    config = RemoteConfig(target="kubernetes:///default/kv:4000", handshake=HANDSHAKE, plugins={"kv_grpc": KVPlugin()},
                          insecure=True, allow_loopback=True, kubernetes={"kubeconfig": kubeconfig}, start_timeout=1)
    with pytest.raises(HandshakeTimeoutError, match=rf"port\(s\) 'grpc' \({port}\), none numbered 4000"):
        with RemoteClient(config):
            pass


def _note(slc: dict[str, object], port: int | str) -> str:
    """What the resolver says of ``port`` with this one slice: the note only when no endpoint came of it."""
    refused: list[str] = []
    assert endpoints_from_slices([slc], port, refused=refused) == [] and refused == []
    return port_note([slc], "kv", port)


@pytest.mark.parametrize("slc", [
    # the name a pod's address would have: ignored (not dialled past the checks an IP gets)
    {"addressType": "FQDN", "ports": [{"name": "grpc", "port": 7001}], "endpoints": [{"addresses": ["kv-0.kv"]}]},
    {"addressType": "IPv4", "ports": [{"name": "grpc", "port": 7001}], "endpoints": [{"addresses": []}]},
    {"addressType": "IPv4", "ports": [{"name": "grpc", "port": 70000}], "endpoints": [{"addresses": ["10.0.0.5"]}]},
], ids=["fqdn", "no-address", "port-70000"])
def test_a_port_the_slices_do_list_is_not_told_as_missing(slc: dict[str, object]) -> None:
    """It said "list endpoints on port(s) 'grpc' (7001), none named 'grpc'": the slices list that port, and
    their endpoints were left out for another reason (a port past 65535 is no port at all)."""
    assert _note(slc, "grpc") == "" and _note(slc, 7001) == ""


def test_another_port_the_slices_list_is_still_told() -> None:
    slc = {"addressType": "IPv4", "ports": [{"name": "grpc", "port": 7001}, {"name": "big", "port": 70000}],
           "endpoints": [{"addresses": ["10.0.0.5"]}]}
    note = _note(slc, "grcp")
    assert "port(s) 'grpc' (7001), none named 'grcp'" in note and "70000" not in note, note


def test_a_port_name_later_pods_bring_is_waited_for(kv_service: KVService, kubeconfig: str) -> None:  # noqa: F811
    """A rollout whose old pods lack the named container port: their slices list only 'grpc', and the
    new pods bring 'admin'. The name is waited for, as a number is (an early refusal of the name was
    tried and reverted: the target was right, the pods were not there yet)."""
    from kubernetes import client

    kv_service.api.create_namespaced_service("default", client.V1Service.from_dict({
        "metadata": {"name": "kv2"}, "spec": {"selector": {"app": "kv-net"}, "ports": [
            {"name": "grpc", "port": 4000, "targetPort": "grpc"},
            {"name": "admin", "port": 4001, "targetPort": "admin"}]}}))
    try:  # whatever fails after the create, the Service goes
        kv_service.add_pod("kv-old")  # declares only 'grpc'
        old = Recorder()
        with EndpointSliceResolver("default", "kv2", "grpc", allow_loopback=True, kubeconfig=kubeconfig) as resolver:
            resolver.start(old)
            old.wait(lambda s: len(ready(s)) == 1)  # the slices list the old pod, on 'grpc' only
        up = Recorder()
        with EndpointSliceResolver("default", "kv2", "admin", allow_loopback=True, kubeconfig=kubeconfig) as resolver:
            resolver.start(up)  # not refused: the Service names the port
            assert ready(up.sets[-1]) == []
            env = {HANDSHAKE.magic_cookie_key: HANDSHAKE.magic_cookie_value, "PLUGIN_PROTOCOL_VERSIONS": "1",
                   "PLUGBAY_LISTEN": "tcp:0.0.0.0:4000"}
            kv_service.api.create_namespaced_pod("default", client.V1Pod.from_dict({
                "metadata": {"name": "kv-new", "labels": {"app": "kv-net"}},
                "spec": {"restartPolicy": "Never", "containers": [{
                    "name": "plugin", "image": kv_service.image,
                    "ports": [{"name": "grpc", "containerPort": 4000}, {"name": "admin", "containerPort": 4000}],
                    "env": [{"name": k, "value": v} for k, v in env.items()]}]}}))
            kv_service.pods.append("kv-new")
            (endpoint,) = up.wait(lambda s: len(ready(s)) == 1)
        assert endpoint.name == "kv-new", endpoint
    finally:
        kv_service.api.delete_namespaced_service("kv2", "default")
