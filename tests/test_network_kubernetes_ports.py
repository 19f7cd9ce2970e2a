"""kubernetes:/// with a port the Service's EndpointSlices do not list: the slices name the ports they do list.

Before, a misspelled port name (or the Service's port number where the slices carry the pod's) gave
an empty endpoint set without a word: a RemoteClient waited out start_timeout and said only
"discovery reports no endpoints". A port name no slice lists now fails the start at once (DiscoveryPortError):
names come from the Service, no later slice brings one. Real pods behind a real Service on the Kubernetes API
stand-in.
"""

from __future__ import annotations

import logging

import pytest

from plugbay.errors import ConfigError, DiscoveryPortError, HandshakeTimeoutError
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
    # a number may come with a rollout's pods (the slices list each pod's target port): waited for, and told
    nothing = Recorder()
    with EndpointSliceResolver("default", "kv", 4000, allow_loopback=True, kubeconfig=kubeconfig) as resolver:
        resolver.start(nothing)
        assert nothing.sets == [[]]
        assert f"port(s) 'grpc' ({port}), none numbered 4000" in resolver.empty_note
    assert [r for r in caplog.records if "none numbered 4000" in r.getMessage()]

    config = RemoteConfig(target="kubernetes:///default/kv:4000", handshake=HANDSHAKE, plugins={"kv_grpc": KVPlugin()},
                          insecure=True, allow_loopback=True, kubernetes={"kubeconfig": kubeconfig}, start_timeout=1)
    with pytest.raises(HandshakeTimeoutError, match=rf"port\(s\) 'grpc' \({port}\), none numbered 4000"):
        with RemoteClient(config):
            pass


def test_a_port_name_no_slice_lists_fails_the_start_at_once(kv_service: KVService, kubeconfig: str) -> None:  # noqa: F811
    """A port name comes from the Service's ports, so no later slice brings it: a start waited out its
    start_timeout for it (a RemoteClient then said "timed out"), where the ports listed tell what to pass."""
    kv_service.add_pod("kv-net-a")
    up = Recorder()
    with EndpointSliceResolver("default", "kv", "grpc", allow_loopback=True, kubeconfig=kubeconfig) as resolver:
        resolver.start(up)
        (endpoint,) = up.wait(lambda s: len(ready(s)) == 1)
    port = endpoint.address.rsplit(":", 1)[1]
    said = rf"kubernetes:///default/kv:grcp: .*port\(s\) 'grpc' \({port}\), none named 'grcp': name one of those"

    with EndpointSliceResolver("default", "kv", "grcp", allow_loopback=True, kubeconfig=kubeconfig) as resolver:
        with pytest.raises(DiscoveryPortError, match=said) as refused:
            resolver.start(Recorder())
    assert isinstance(refused.value, ConfigError)

    config = RemoteConfig(target="kubernetes:///default/kv:grcp", handshake=HANDSHAKE, plugins={"kv_grpc": KVPlugin()},
                          insecure=True, allow_loopback=True, kubernetes={"kubeconfig": kubeconfig}, start_timeout=120)
    with pytest.raises(DiscoveryPortError, match=said):  # not the HandshakeTimeoutError of 120 s
        with RemoteClient(config):
            pass


def test_a_port_name_is_waited_for_while_the_service_has_no_endpoints_yet(kv_service: KVService,  # noqa: F811
                                                                          kubeconfig: str) -> None:
    # no slice lists any port yet (no pod, or only the controller's placeholder): the pods may be coming up
    up = Recorder()
    with EndpointSliceResolver("default", "kv", "grpc", allow_loopback=True, kubeconfig=kubeconfig) as resolver:
        resolver.start(up)
        kv_service.add_pod("kv-net-late")
        assert ready(up.wait(lambda s: len(ready(s)) == 1)) == ["kv-net-late"]


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


@pytest.mark.parametrize("slices", [
    [],  # none yet
    [{"addressType": "IPv4", "endpoints": None, "ports": None}],  # the controller's placeholder: no endpoints
    # the name listed, its endpoints gone for now: the Service has it
    [{"addressType": "IPv4", "ports": [{"name": "grcp", "port": 7002}], "endpoints": []},
     {"addressType": "IPv4", "ports": [{"name": "grpc", "port": 7001}], "endpoints": [{"addresses": ["10.0.0.5"]}]}],
], ids=["no-slices", "placeholder", "listed-without-endpoints"])
def test_a_port_name_is_not_refused_while_the_slices_may_still_bring_it(slices: list[dict[str, object]]) -> None:
    from plugbay.network.slices import unlisted_name

    assert unlisted_name(slices, "kv", "grcp") == ""
    listing = [{"addressType": "IPv4", "ports": [{"name": "grpc", "port": 7001}],
                "endpoints": [{"addresses": ["10.0.0.5"]}]}]
    assert "none named 'grcp'" in unlisted_name(listing, "kv", "grcp")
    assert unlisted_name(listing, "kv", 4000) == ""  # a number is waited for (a rollout may bring it)
