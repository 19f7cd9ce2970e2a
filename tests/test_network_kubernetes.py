"""kubernetes:/// discovery: EndpointSliceResolver against the stand-in's real Services, pods and watches.

The KV plugin runs as labelled pods (real containers) behind a Service; the
stand-in keeps the Service's EndpointSlices as its pods start, get deleted and
end, and the resolver follows them through a real kubeconfig and real watches.
"""

from __future__ import annotations

import ipaddress
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from kubernetes import client, config

from plugbay.errors import (
    ClientStateError,
    ConfigError,
    EngineUnavailableError,
    PermissionDeniedError,
)
from plugbay.network import slices as slice_parsing
from plugbay.network.kubernetes import EndpointSliceResolver
from plugbay.network.slices import endpoints_from_slices
from plugbay.network.resolver import Endpoint, refusal
from tests.kube_standin import TOKEN, StandIn
from tests.kube_standin.fixtures import kubeconfig, kvtrap, standin  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, KVPlugin  # noqa: E402

LABELS = {"app": "kv-net"}


class Recorder:
    """Collects every endpoint set a resolver reports."""

    def __init__(self) -> None:
        self.sets: list[list[Endpoint]] = []
        self.cond = threading.Condition()

    def __call__(self, endpoints: Sequence[Endpoint]) -> None:
        with self.cond:
            self.sets.append(list(endpoints))
            self.cond.notify_all()

    def wait(self, pred: Callable[[list[Endpoint]], bool], timeout: float = 60) -> list[Endpoint]:
        with self.cond:
            ok = self.cond.wait_for(lambda: bool(self.sets) and pred(self.sets[-1]), timeout=timeout)
            assert ok, f"no reported set matched within {timeout}s; sets: {self.sets[-3:]}"
            return self.sets[-1]

    def seen(self, pred: Callable[[list[Endpoint]], bool]) -> bool:
        with self.cond:
            return any(pred(s) for s in self.sets)


def ready(endpoints: list[Endpoint]) -> list[str]:
    return sorted(e.name for e in endpoints if e.ready)


class KVService:
    """A Service named kv selecting the labelled KV pods this helper creates and deletes."""

    def __init__(self, kubeconfig: str, image: str) -> None:
        self.api = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
        self.image = image
        self.pods: list[str] = []
        self.api.create_namespaced_service("default", client.V1Service.from_dict({
            "metadata": {"name": "kv"},
            "spec": {"selector": LABELS, "ports": [{"name": "grpc", "port": 4000, "targetPort": "grpc"}]}}))

    def add_pod(self, name: str) -> None:
        env = {HANDSHAKE.magic_cookie_key: HANDSHAKE.magic_cookie_value, "PLUGIN_PROTOCOL_VERSIONS": "1",
               "PLUGBAY_LISTEN": "tcp:0.0.0.0:4000"}
        self.api.create_namespaced_pod("default", client.V1Pod.from_dict({
            "metadata": {"name": name, "labels": LABELS},
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "plugin", "image": self.image, "ports": [{"name": "grpc", "containerPort": 4000}],
                "env": [{"name": k, "value": v} for k, v in env.items()]}]}}))
        self.pods.append(name)

    def delete_pod(self, name: str, grace: int = 0) -> None:
        self.api.delete_namespaced_pod(name, "default", grace_period_seconds=grace)

    def close(self) -> None:
        try:
            self.api.delete_namespaced_service("kv", "default")
            for name in self.pods:
                try:
                    self.delete_pod(name)
                except client.ApiException as exc:
                    assert exc.status == 404
            deadline = time.monotonic() + 60
            while self.api.list_namespaced_pod("default", label_selector="app=kv-net").items:
                assert time.monotonic() < deadline, "the KV pods did not go away"
                time.sleep(0.2)
        finally:
            self.api.api_client.close()


@pytest.fixture()
def kv_service(kubeconfig: str, kvtrap: str) -> Iterator[KVService]:  # noqa: F811
    svc = KVService(kubeconfig, kvtrap)
    try:
        yield svc
    finally:
        svc.close()


def kv_round_trip(endpoint: Endpoint, value: bytes) -> bytes:
    """Put and get through the endpoint the resolver reported (plain gRPC to 127.0.0.1:<port>)."""
    assert endpoint.address.startswith("127.0.0.1:"), endpoint  # never a bridge address
    with grpc.insecure_channel(endpoint.address) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        kv = KVPlugin().grpc_client(None, channel)  # type: ignore[arg-type]
        deadline = time.monotonic() + 30
        while True:
            try:
                kv.put("where", value)
                return bytes(kv.get("where"))
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def test_resolver_follows_the_pods_behind_a_service(kv_service: KVService, kubeconfig: str) -> None:  # noqa: F811
    kv_service.add_pod("kv-net-a")
    kv_service.add_pod("kv-net-b")
    seen = Recorder()
    resolver = EndpointSliceResolver("default", "kv", "grpc", allow_loopback=True, kubeconfig=kubeconfig)
    resolver.start(seen)
    try:
        assert seen.sets, "start() returned before reporting the first set"
        both = seen.wait(lambda s: ready(s) == ["kv-net-a", "kv-net-b"])
        assert len({e.address for e in both}) == 2
        for i, endpoint in enumerate(both):  # each endpoint is the real pod: it answers KV calls
            assert kv_round_trip(endpoint, f"pod {i}".encode()) == f"pod {i}".encode()
        threads = [t.name for t in threading.enumerate() if t.name.startswith("plugbay-endpointslices-")]
        assert threads == ["plugbay-endpointslices-default-kv"]

        kv_service.add_pod("kv-net-c")  # scale up: it joins
        seen.wait(lambda s: ready(s) == ["kv-net-a", "kv-net-b", "kv-net-c"])

        kv_service.delete_pod("kv-net-a", grace=3)  # scale down: it drains, then it is gone
        final = seen.wait(lambda s: [e.name for e in s] == ["kv-net-b", "kv-net-c"] or
                          sorted(e.name for e in s) == ["kv-net-b", "kv-net-c"])
        assert seen.seen(lambda s: any(e.name == "kv-net-a" and e.terminating and not e.ready for e in s))
        assert all(e.ready and not e.terminating for e in final)
        assert resolver.lists == 1  # one list, then only the watch
    finally:
        resolver.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("plugbay-endpointslices-")]


def test_port_by_number_and_a_port_no_slice_has(kv_service: KVService, kubeconfig: str) -> None:  # noqa: F811
    kv_service.add_pod("kv-net-a")
    kv_service.add_pod("kv-net-b")
    by_name = Recorder()
    with EndpointSliceResolver("default", "kv", "grpc", allow_loopback=True, kubeconfig=kubeconfig) as resolver:
        resolver.start(by_name)
        both = by_name.wait(lambda s: len(ready(s)) == 2)
    # the stand-in publishes each pod's port on its own 127.0.0.1 port, so each pod has its own slice:
    # a number picks the slices that list it
    number = int(both[0].address.rsplit(":", 1)[1])
    by_number = Recorder()
    with EndpointSliceResolver("default", "kv", str(number), allow_loopback=True, kubeconfig=kubeconfig) as resolver:
        resolver.start(by_number)
        assert by_number.sets[-1] == [both[0]]
    nothing = Recorder()
    with EndpointSliceResolver("default", "kv", "metrics", allow_loopback=True, kubeconfig=kubeconfig) as resolver:
        resolver.start(nothing)
        assert nothing.sets == [[]]


def test_watch_starts_over_after_410_gone_and_rides_out_a_403(kv_service: KVService, standin: StandIn,  # noqa: F811
                                                              kubeconfig: str) -> None:  # noqa: F811
    kv_service.add_pod("kv-net-a")
    seen = Recorder()
    with EndpointSliceResolver("default", "kv", "grpc", allow_loopback=True, kubeconfig=kubeconfig) as resolver:
        resolver.start(seen)
        seen.wait(lambda s: ready(s) == ["kv-net-a"])
        lists = standin.calls.get(("list", "endpointslices"), 0)
        # the API server forgets old versions and drops the watch, and pods change meanwhile:
        # resuming from the old version gets 410 Gone, so the resolver lists again
        assert standin.expire_watches() == 1
        kv_service.add_pod("kv-net-b")
        seen.wait(lambda s: ready(s) == ["kv-net-a", "kv-net-b"])
        assert resolver.lists == 2 and standin.calls[("list", "endpointslices")] == lists + 1

        # RBAC taken away mid-run: the watch retries with a backoff, keeping what it knew
        standin.deny("watch", "endpointslices")
        standin.expire_watches()
        deadline = time.monotonic() + 30
        while not isinstance(resolver.last_error, PermissionDeniedError):
            assert time.monotonic() < deadline, resolver.last_error
            time.sleep(0.1)
        assert "discovery.k8s.io" in str(resolver.last_error)
        assert ready(seen.sets[-1]) == ["kv-net-a", "kv-net-b"]
        standin.allow_all()  # granted again: it catches up
        kv_service.delete_pod("kv-net-a")
        seen.wait(lambda s: [e.name for e in s] == ["kv-net-b"], timeout=60)


def test_forbidden_names_the_rbac_rule(standin: StandIn, kubeconfig: str) -> None:  # noqa: F811
    standin.deny("list", "endpointslices")
    resolver = EndpointSliceResolver("default", "kv", "grpc", allow_loopback=True, kubeconfig=kubeconfig)
    with pytest.raises(PermissionDeniedError) as info:
        resolver.start(Recorder())
    text = str(info.value)
    assert "403 Forbidden" in text and 'API group "discovery.k8s.io"' in text
    assert "endpointslices: list, watch" in text and "kubernetes:///default/kv:grpc" in text
    assert 'cannot list resource "endpointslices"' in text  # the server's own words
    standin.allow_all()  # RBAC fixed: the same resolver starts now
    seen = Recorder()
    resolver.start(seen)
    assert seen.sets == [[]]
    resolver.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("plugbay-endpointslices-")]


def test_the_discovery_rule_grants_exactly_the_verbs_discovery_calls(standin: StandIn,  # noqa: F811
                                                                     kubeconfig: str) -> None:  # noqa: F811
    """DISCOVERY_RBAC_RULES (and so the chart's Role and the docs' tables) grant what a resolver calls: a
    verb it never calls (get) is a permission handed out for nothing."""
    from plugbay.runners.kubernetes import DISCOVERY_RBAC_RULES

    resolver = EndpointSliceResolver("default", "kv", "grpc", allow_loopback=True, kubeconfig=kubeconfig,
                                     watch_timeout=1)
    resolver.start(Recorder())
    try:
        deadline = time.monotonic() + 30
        while standin.calls.get(("watch", "endpointslices"), 0) < 2:  # a whole watch, then the next one
            assert time.monotonic() < deadline, standin.calls
            time.sleep(0.1)
    finally:
        resolver.close()
    used = {verb for verb, resource in standin.calls if resource == "endpointslices"}
    assert [(g, r, tuple(sorted(v))) for g, r, v in DISCOVERY_RBAC_RULES] == [
        ("discovery.k8s.io", "endpointslices", tuple(sorted(used)))]


def test_unreachable_api_is_engine_unavailable(tmp_path: Path, closed_port: int) -> None:
    import json

    port = closed_port  # a loopback port nobody listens on
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "gone", "user": {"token": TOKEN}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "gone"}}]}))
    resolver = EndpointSliceResolver("default", "kv", 4000, allow_loopback=True, kubeconfig=str(path))
    with pytest.raises(EngineUnavailableError, match=f"cannot reach the Kubernetes API at http://127.0.0.1:{port}"
                       " to discover kubernetes:///default/kv:4000.*Check that the cluster is up"):
        resolver.start(Recorder())
    with pytest.raises(EngineUnavailableError, match="no usable Kubernetes configuration"):
        EndpointSliceResolver("default", "kv", 4000, allow_loopback=True,
                              kubeconfig=str(tmp_path / "missing")).start(Recorder())


@pytest.mark.parametrize("args, message", [
    (("Default", "kv", 80), "namespace 'Default' is not a Kubernetes name"),
    (("default", "kv.svc", 80), "service 'kv.svc' is not a Kubernetes name"),
    (("default", "kv", 0), "must be a TCP port"),
    (("default", "kv", 70000), "must be a TCP port"),
    (("default", "kv", "Grpc"), "'Grpc' is not a Kubernetes port name"),
    (("default", "kv", "a-very-long-port-name"), "is not a Kubernetes port name"),
    (("default", "kv", 1.5), "must be a port number or name"),
])
def test_bad_targets_are_config_errors(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EndpointSliceResolver(*args)


@pytest.mark.parametrize("kwargs, message", [
    ({"watch_timeout": "60"}, "watch_timeout .*must be a whole number >= 1, got '60'"),
    ({"watch_timeout": 0}, "watch_timeout .*must be a whole number >= 1, got 0"),
    ({"watch_timeout": -5}, "watch_timeout .*must be a whole number >= 1, got -5"),
    ({"watch_timeout": 2.5}, "watch_timeout .*must be a whole number >= 1, got 2.5"),
    ({"max_endpoints": "3"}, "max_endpoints must be a whole number >= 1, got '3'"),
    ({"max_endpoints": 0}, "max_endpoints must be a whole number >= 1, got 0"),
    ({"max_endpoints": True}, "max_endpoints must be a whole number >= 1, got True"),
    ({"allow_loopback": "false"}, "allow_loopback must be True or False"),
])
def test_bad_options_are_config_errors_when_made_directly(kwargs: dict[str, Any], message: str) -> None:
    """Checked as RemoteConfig.kubernetes checks them, not left to fail in the watch thread (a str
    watch_timeout: a TypeError per watch) or to cap every endpoint away (max_endpoints=0)."""
    with pytest.raises(ConfigError, match=message):
        EndpointSliceResolver("default", "kv", "grpc", **kwargs)


def test_start_twice_is_refused(standin: StandIn, kubeconfig: str) -> None:  # noqa: F811
    with EndpointSliceResolver("default", "nothing-here", "grpc", allow_loopback=True,
                               kubeconfig=kubeconfig) as resolver:
        seen = Recorder()
        resolver.start(seen)
        assert seen.sets == [[]]  # no Service yet: an empty set, and the watch waits for one
        with pytest.raises(ClientStateError, match="already started or closed; make a new one"):
            resolver.start(seen)


def test_slice_contents_map_to_endpoints() -> None:
    """Conditions, address types and untrusted slice text, on EndpointSlice JSON as the API sends it."""
    ports = [{"name": "grpc", "port": 4000, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}]

    def ep(addr: str, name: str, **cond: bool) -> dict[str, Any]:
        return {"addresses": [addr], "conditions": cond, "targetRef": {"kind": "Pod", "name": name}}

    slices = [
        {"addressType": "IPv4", "ports": ports, "endpoints": [
            ep("10.0.0.1", "a", ready=True), ep("10.0.0.2", "b"),  # absent ready means ready
            ep("10.0.0.3", "c", ready=False, serving=True, terminating=True), ep("10.0.0.4", "d", ready=False),
            ep("not-an-ip", "e", ready=True), ep("fd00::1", "f", ready=True), {"addresses": []},
            # no replica: the metadata service (link-local), unspecified, multicast, broadcast
            ep("169.254.169.254", "m"), ep("0.0.0.0", "u"), ep("224.0.0.1", "x"), ep("255.255.255.255", "y")]},
        {"addressType": "IPv6", "ports": ports, "endpoints": [ep("fd00::1", "f", ready=True), ep("fe80::1", "l"),
                                                              ep("::", "v"), ep("ff02::1", "w"),
                                                              ep("::ffff:169.254.169.254", "n")]},
        {"addressType": "FQDN", "ports": ports, "endpoints": [ep("kv-0.kv.plugins.svc", "g")]},  # a name: ignored
        # the same address in a second slice during a change: counted once, ready wins
        {"addressType": "IPv4", "ports": ports, "endpoints": [ep("10.0.0.4", "d", ready=True)]},
        {"addressType": "IPv4", "ports": [{"name": "grpc", "port": 99999}], "endpoints": [ep("10.0.0.9", "z")]},
    ]
    got = {e.name: e for e in endpoints_from_slices(slices, "grpc")}
    assert got == {
        "a": Endpoint("tcp", "10.0.0.1:4000", name="a"),
        "b": Endpoint("tcp", "10.0.0.2:4000", name="b"),
        "c": Endpoint("tcp", "10.0.0.3:4000", ready=False, terminating=True, name="c"),
        "d": Endpoint("tcp", "10.0.0.4:4000", name="d"),
        "f": Endpoint("tcp", "[fd00::1]:4000", name="f"),
    }
    assert endpoints_from_slices(slices, 4000) == endpoints_from_slices(slices, "grpc")
    assert endpoints_from_slices(slices, "dns") == [] and endpoints_from_slices(slices, 53) == []


def test_a_slice_address_with_a_zone_index_is_refused() -> None:
    """fd00::1%eth0 named the replica fd00::1 once per zone index (any text): N endpoints for one replica,
    some no gRPC target at all."""
    slices = [{"addressType": "IPv6", "ports": [{"name": "grpc", "port": 7000, "protocol": "TCP"}],
               "endpoints": [{"addresses": [a]} for a in ["fd00::1", "fd00::1%eth0", "fd00::1%eth1",
                                                         "fd00::1%x]:1 ?#", "::1%lo"]]}]
    refused: list[str] = []
    got = endpoints_from_slices(slices, 7000, allow_loopback=True, refused=refused)
    assert [e.address for e in got] == ["[fd00::1]:7000"]
    assert refused == ["fd00::1%eth0", "fd00::1%eth1", "fd00::1%x]:1 ?#", "::1%lo"]
    assert "zone index" in (refusal(ipaddress.ip_address("fd00::1%eth0")) or "")


def test_a_slice_port_that_is_a_boolean_is_no_port() -> None:
    """JSON true is a Python int (bool): it was read as port 1."""
    slices = [{"addressType": "IPv4", "ports": [{"name": "grpc", "port": True, "protocol": "TCP"}],
               "endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": True}}]}]
    assert endpoints_from_slices(slices, "grpc") == []
    assert endpoints_from_slices(slices, 1) == []


def test_an_fqdn_slice_naming_an_ip_gets_the_ip_slices_address_check() -> None:
    """A hostname the resolver would read as an IPv4 address (dotted, or inet_aton's numeric forms)
    slipped past the check an IPv4 slice gets: an FQDN slice could aim health checks at the metadata
    service."""
    ports = [{"name": "grpc", "port": 7001, "protocol": "TCP"}]

    def ep(addr: str) -> dict[str, Any]:
        return {"addresses": [addr], "conditions": {"ready": True}, "targetRef": {"name": addr}}

    bad = ["169.254.169.254", "0.0.0.0", "224.0.0.1", "255.255.255.255",
           "2852039166", "0xa9fea9fe", "169.254.43518", "0", "0x0", "0xe0.1", "4294967295", "0251.0376.0251.0376"]
    good = ["10.0.0.7", "2130706433", "0x7f.1"]
    slices = [{"addressType": "FQDN", "ports": ports, "endpoints": [ep(a) for a in bad + good]}]
    # loopback (127.0.0.1 spelt as a number) is refused too, unless allowed
    refused: list[str] = []
    assert [e.address for e in endpoints_from_slices(slices, "grpc", refused=refused)] == ["10.0.0.7:7001"]
    assert refused.count("127.0.0.1") == 2
    # a numeric host is kept in dotted form, so two spellings of one address are one endpoint
    assert sorted(e.address for e in endpoints_from_slices(slices, "grpc", allow_loopback=True)) == sorted([
        "10.0.0.7:7001", "127.0.0.1:7001"])


def test_an_fqdn_slices_host_names_are_ignored(caplog: pytest.LogCaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A name gRPC would resolve when it dials escaped the address checks: metadata.google.internal,
    or a wildcard DNS name such as 169.254.169.254.nip.io, reached the metadata service. Kubernetes
    makes no FQDN slices (kube-proxy ignores them): their names yield no endpoint, with one warning."""
    monkeypatch.setattr(slice_parsing, "_told", threading.Event(), raising=False)
    ports = [{"name": "grpc", "port": 80, "protocol": "TCP"}]
    names = ["metadata.google.internal", "169.254.169.254.nip.io", "kv-0.kv.plugins.svc", "1.2.3.4.5"]
    fqdn = {"addressType": "FQDN", "ports": ports,
            "endpoints": [{"addresses": [n], "conditions": {"ready": True}} for n in names]}
    ipv4 = {"addressType": "IPv4", "ports": ports, "endpoints": [{"addresses": ["10.0.0.8"]}]}
    with caplog.at_level(logging.DEBUG, logger="plugbay.network.kubernetes"):
        for _ in range(3):  # each watch event reads every slice again
            assert endpoints_from_slices([fqdn, ipv4], "grpc") == [Endpoint("tcp", "10.0.0.8:80")]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "metadata.google.internal" in warnings[0].getMessage()
    assert "FQDN" in warnings[0].getMessage()


def test_the_charts_deployment_and_service_scale_with_discovery(standin: StandIn, kubeconfig: str,  # noqa: F811
                                                                kvtrap: str, tmp_path: Path) -> None:  # noqa: F811
    """charts/plugbay's network-mode Deployment and Service, applied as rendered: the target the chart
    hands the host resolves to the Deployment's pods, and follows it as it scales up and down."""
    from tests.gobuild import go_program_or_skip
    from tests.test_helm_chart import render

    renderer = go_program_or_skip("helmrender")
    repo, tag = kvtrap.split(":")
    docs = render(renderer, tmp_path, {
        "host": {"enabled": True, "image": {"repository": "example.com/host"}},
        "network": {"enabled": True, "mode": "serve", "image": {"repository": repo, "tag": tag},
                    "tls": {"secretName": "kv-tls"},
                    "env": [{"name": HANDSHAKE.magic_cookie_key, "value": HANDSHAKE.magic_cookie_value},
                            {"name": "PLUGBAY_LISTEN", "value": "tcp:0.0.0.0:4000"}]}}, namespace="default")
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    service, deployment = by[("Service", "plugbay-plugin")], by[("Deployment", "plugbay-plugin")]
    host_env = {e["name"]: e.get("value") for e in
                by[("Deployment", "plugbay-host")]["spec"]["template"]["spec"]["containers"][0]["env"]}
    ns, rest = host_env["PLUGBAY_NETWORK_TARGET"][len("kubernetes:///"):].split("/")
    name, port = rest.split(":")
    pod_spec = deployment["spec"]["template"]["spec"]
    # The stand-in mounts no Secrets, so the pods serve the classic way (PLUGBAY_LISTEN) rather
    # than with the certificate files network mode would read; a short grace keeps scale-down quick.
    for c in pod_spec["containers"]:
        c["env"] = [e for e in c["env"] if not e["name"].startswith("PLUGBAY_NETWORK_")]
    pod_spec["terminationGracePeriodSeconds"] = 2
    core = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    apps = client.AppsV1Api(core.api_client)
    try:
        core.create_namespaced_service(ns, client.V1Service.from_dict(service))
        apps.create_namespaced_deployment(ns, client.V1Deployment.from_dict(deployment))
        seen = Recorder()
        with EndpointSliceResolver(ns, name, port, allow_loopback=True, kubeconfig=kubeconfig) as resolver:
            resolver.start(seen)
            two = seen.wait(lambda s: len(ready(s)) == 2)
            assert all(e.name.startswith("plugbay-plugin-") for e in two)
            # the root stays read-only, yet the KV plugin stores its files: the chart's writableDirs
            # gives the image's working folder (/data) an emptyDir
            assert all(c["securityContext"]["readOnlyRootFilesystem"] for c in pod_spec["containers"])
            assert kv_round_trip(two[0], b"chart") == b"chart"
            apps.patch_namespaced_deployment_scale(name, ns, {"spec": {"replicas": 3}})
            three = seen.wait(lambda s: len(ready(s)) == 3)
            assert set(ready(two)) < set(ready(three))
            apps.patch_namespaced_deployment_scale(name, ns, {"spec": {"replicas": 1}})
            one = seen.wait(lambda s: len(s) == 1 and len(ready(s)) == 1)
            gone = set(ready(three)) - set(ready(one))
            assert len(gone) == 2 and seen.seen(lambda s: any(e.name in gone and e.terminating for e in s))
            assert apps.read_namespaced_deployment(name, ns).status.ready_replicas == 1
    finally:
        try:
            apps.delete_namespaced_deployment(name, ns)
        finally:
            core.delete_namespaced_service(name, ns)
            deadline = time.monotonic() + 60
            while core.list_namespaced_pod(ns, label_selector="app.kubernetes.io/component=plugin").items:
                assert time.monotonic() < deadline, "the Deployment's pods did not go away"
                time.sleep(0.2)
            core.api_client.close()
