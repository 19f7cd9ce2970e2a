"""charts/plugbay as an operator deploys a network-mode plugin: disruption budget, node spread and drain on
rollouts, private registries and digests, pod annotations and labels, names Kubernetes refuses, the
NetworkPolicy's peers, the name hosts check the plugin's certificate for, and NOTES.txt. Rendered and
validated as in tests/test_helm_chart.py."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.test_helm_chart import (CHART, K8S_VERSION, NETWORK_VALUES, PEM, REPO, SERVE_VALUES, SIDECAR_VALUES,
                                   kinds_of, render, renderer)

__all__ = ["renderer"]  # the fixture, shared


def render_notes(renderer: Path, tmp_path: Path, values: dict[str, Any], release: str = "plugbay",
                 namespace: str = "hosts") -> str:
    """NOTES.txt as `helm install` prints it after the release."""
    path = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(values))
    out = subprocess.run([str(renderer), "-chart", str(CHART), "-release", release, "-namespace", namespace,
                          "-values", str(path), "-notes"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip())
    assert "<no value>" not in out.stdout
    return out.stdout


def docs_certificate_names() -> tuple[list[str], list[str]]:
    """The DNS names docs/kubernetes.md's openssl recipe and cert-manager Certificate give the plugin."""
    doc = (REPO / "docs" / "kubernetes.md").read_text()
    (san,) = re.findall(r'printf "subjectAltName=([^\\"]+)', doc)
    (dns,) = re.findall(r"^  dnsNames: (\[.*\])$", doc, re.M)
    return [n.removeprefix("DNS:") for n in san.split(",")], yaml.safe_load(dns)


def test_the_host_learns_a_name_the_plugins_certificate_carries(renderer: Path, tmp_path: Path) -> None:
    """Hosts dial the Service's endpoints, pod IPs, which the plugin's certificate does not name: without a
    server_name TLS refuses every replica. The host Deployment gets one, and it is a name the docs'
    certificate recipes (for their own `helm install kv ...`) carry: a real mTLS handshake dialled by IP
    passes with it and fails without it."""
    import grpc
    from cryptography import x509

    from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
    from plugbay.core.plugin.health import HealthServicer
    from tests.netcerts import issue, write_set
    from tests.tls_server_util import serve_mtls

    values = {**NETWORK_VALUES, "network": {**NETWORK_VALUES["network"], "tls": {"secretName": "kv-plugin-tls"}}}
    docs = kinds_of(render(renderer, tmp_path, values, release="kv"))
    host = docs[("Deployment", "kv-plugbay-host")]["spec"]["template"]["spec"]["containers"][0]
    name = {e["name"]: e.get("value") for e in host["env"]}["PLUGBAY_NETWORK_SERVER_NAME"]
    assert name == "kv-plugbay-plugin.plugins.svc"
    openssl_names, cert_manager_names = docs_certificate_names()
    assert name in openssl_names and name in cert_manager_names
    # the docs' certificate (DNS names only), served on an IP as a pod is
    certs = write_set(tmp_path / "tls")
    server = issue(certs.server_ca, "plugbay-plugin", server=True, sans=[x509.DNSName(n) for n in openssl_names])
    certs.cert_file.write_bytes(server.cert_pem + certs.server_ca.cert_pem)
    certs.key_file.write_bytes(server.key_pem)
    health = HealthServicer()
    grpc_server, address = serve_mtls("127.0.0.1:0", certs, health)
    creds = grpc.ssl_channel_credentials(certs.server_ca.cert_pem, certs.client.key_pem, certs.client.cert_pem)
    try:
        for override, works in ((name, True), (None, False)):
            options = [("grpc.ssl_target_name_override", override)] if override else []
            with grpc.secure_channel(address, creds, options=options) as channel:
                check = health_pb2_grpc.HealthStub(channel).Check  # type: ignore[no-untyped-call]
                try:
                    check(health_pb2.HealthCheckRequest(service=""), timeout=10)
                    assert works, "the certificate names no IP, yet the handshake passed without a server name"
                except grpc.RpcError as exc:
                    assert not works, exc
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
        # a certificate of other names: the operator says which
        values["network"]["tls"]["serverName"] = "kv.plugins.internal"
        host = kinds_of(render(renderer, tmp_path, values))[("Deployment", "plugbay-host")]
        env = {e["name"]: e.get("value") for e in host["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["PLUGBAY_NETWORK_SERVER_NAME"] == "kv.plugins.internal"
    finally:
        grpc_server.stop(0).wait()
        health.close()


def test_notes_tell_the_operator_how_a_host_connects(renderer: Path, tmp_path: Path) -> None:
    # the target alone does not connect a host: it needs the name to check the plugin's certificate for, a
    # client certificate the plugin's CA signed, the EndpointSlice permission, and to be a peer the policy admits
    docs = kinds_of(render(renderer, tmp_path, NETWORK_VALUES))
    env = {e["name"]: e.get("value") for e in
           docs[("Deployment", "plugbay-host")]["spec"]["template"]["spec"]["containers"][0]["env"]}
    notes = render_notes(renderer, tmp_path, NETWORK_VALUES)
    flat = " ".join(notes.split())
    assert f"target: {env['PLUGBAY_NETWORK_TARGET']}" in flat
    assert f"server_name: {env['PLUGBAY_NETWORK_SERVER_NAME']}" in flat
    assert "signed by the CA in ca.crt of Secret plugbay-plugin-tls (namespace plugins)" in flat
    assert "Secret host-client-tls at /etc/plugbay/client-tls" in flat and "WARNING" not in flat
    assert "endpointslices (discovery.k8s.io) in namespace plugins" in flat
    assert ("admits only the chart's host pods (namespace hosts) and the peers in network.networkPolicy.extraFrom:"
            " any other host's connection is dropped") in flat
    assert "\n\n" not in notes.strip()
    # the chart's host without a client certificate cannot connect at all: said, not left to a TLS error
    bare = {**NETWORK_VALUES, "network": {**NETWORK_VALUES["network"], "tls": PEM}}
    flat = " ".join(render_notes(renderer, tmp_path, bare).split())
    assert "WARNING: network.tls.clientSecretName is empty: the chart's host has no client certificate" in flat
    # no discovery permission granted: said too
    no_rbac = {**NETWORK_VALUES, "network": {**NETWORK_VALUES["network"], "discovery": False}}
    assert "WARNING: network.discovery and rbac.discovery are false" in render_notes(renderer, tmp_path, no_rbac)



def test_notes_claim_no_permission_or_host_the_chart_did_not_make(renderer: Path, tmp_path: Path) -> None:
    # rbac.create=false renders no Role: NOTES said hosts "may now start plugin pods" and the discovery permission
    # was "granted to ServiceAccount ...", and an operator believing it met 403s
    no_role = {**NETWORK_VALUES, "rbac": {"create": False}}
    assert not [d for d in render(renderer, tmp_path, no_role) if d["kind"] in ("Role", "RoleBinding")]
    flat = " ".join(render_notes(renderer, tmp_path, no_role).split())
    assert "may now start" not in flat and "granted to" not in flat
    assert ("rbac.create is false, so the chart made no Role: hosts running as ServiceAccount plugbay-host"
            " (namespace hosts) need a Role of your own to start plugin pods in namespace plugins") in flat
    assert ("WARNING: rbac.create is false: the chart makes no Role, so it grants no host that permission") in flat
    # nor does rbac.portForward bind the extra subjects anything then (found in review)
    subjects = {**NETWORK_VALUES, "rbac": {"create": False, "extraSubjects": [{"kind": "User", "name": "u"}]}}
    assert "set rbac.portForward=true" not in render_notes(renderer, tmp_path, subjects)
    # with the Role, both are said as before
    flat = " ".join(render_notes(renderer, tmp_path, NETWORK_VALUES).split())
    assert "ServiceAccount plugbay-host (namespace hosts) may now start plugin pods in namespace plugins" in flat
    assert "(granted to ServiceAccount plugbay-host; other hosts need a Role of their own)" in flat
    # without the chart's host no env names it, and one replica is one
    alone = {"network": {**NETWORK_VALUES["network"], "replicas": 1}}
    flat = " ".join(render_notes(renderer, tmp_path, alone).split())
    assert "in network mode (1 replica) over mutual TLS" in flat
    assert "PLUGBAY_NETWORK" not in flat and "the chart's host" not in flat
    assert ("target: kubernetes:///hosts/plugbay-plugin:grpc server_name: plugbay-plugin.hosts.svc (the plugin's "
            "certificate must name it) client certificate") in flat
    flat = " ".join(render_notes(renderer, tmp_path, NETWORK_VALUES).split())
    assert "(3 replicas)" in flat and "(env PLUGBAY_NETWORK_TARGET in the chart's host)" in flat

@pytest.mark.parametrize("values, sets, drain", [
    ({}, (), 5), ({"drainSeconds": 12}, (), 12), ({}, ("network.drainSeconds=8",), 8), ({"drainSeconds": 0}, (), 0),
    ({"mode": "serve", "tls": {"secretName": "s"}}, (), 5), ({"drainSeconds": "6"}, (), 6),
    ({"drainSeconds": 7.0}, (), 7)], ids=["default", "file", "set", "off", "serve", "file-string", "file-float"])
def test_a_deleted_plugin_pod_serves_on_while_hosts_learn_it_is_terminating(
        renderer: Path, tmp_path: Path, values: dict[str, Any], sets: tuple[str, ...], drain: int) -> None:
    # the kubelet's SIGTERM and the endpoint's "terminating" come together; hosts see the latter through
    # their watch a moment later and still send new calls, while the gateway refuses new calls at SIGTERM
    # and gives those in flight 2 s: a rollout cut streams and long calls that the hosts' pools would drain
    docs = render(renderer, tmp_path, {**NETWORK_VALUES, "network": {**NETWORK_VALUES["network"], **values}},
                  sets=sets)
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "plugbay-plugin")
    kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
    pod = dep["spec"]["template"]["spec"]
    (plugin,) = pod["containers"]
    if drain:
        command = plugin["lifecycle"]["preStop"]["exec"]["command"]
        assert command == ["python", "-c", f"import time; time.sleep({drain})"]
        # the hook is a command that runs: valid Python
        compile(command[2], "preStop", "exec")
        if values.get("mode") == "serve":
            # the container runs the operator's own command, so nothing here shows `python` is on the image's
            # PATH: values.yaml and docs/kubernetes.md say a failing hook stops the pod at once, as 0 does
            assert plugin["command"] == NETWORK_VALUES["network"]["command"]
        else:
            # the gateway runs on that interpreter, found on PATH as the hook's is
            assert plugin["command"][:3] == [command[0], "-m", "plugbay.network.gateway"]
    else:
        assert "lifecycle" not in plugin
    # the grace period holds the drain and the gateway's own stop after it (its default 30 s is left whole)
    assert pod["terminationGracePeriodSeconds"] == drain + 30



@pytest.mark.parametrize("values, sets", [
    *[({"drainSeconds": given}, ()) for given in ("abc", "5s", 5.5, -1, "-1", True, [5])],
    *[({}, (f"network.drainSeconds={given}",)) for given in ("abc", "5s", "5.5", "-3")]])
def test_a_drain_that_is_no_whole_number_of_seconds_fails_the_render(
        renderer: Path, tmp_path: Path, values: dict[str, Any], sets: tuple[str, ...]) -> None:
    # int64 made "abc" and "5s" 0 (no drain at all) and 5.5 5, without a word
    with pytest.raises(RuntimeError, match=r"network.drainSeconds must be a whole number of seconds, 0 \(no drain\)"
                                           r" or more, such as 5 \(no unit, no fraction\), not \""):
        render(renderer, tmp_path, {**NETWORK_VALUES, "network": {**NETWORK_VALUES["network"], **values}}, sets=sets)

def test_the_plugins_replicas_are_spread_over_nodes(renderer: Path, tmp_path: Path) -> None:
    # nothing kept the scheduler from putting every replica on one node, whose loss (no budget helps with
    # that) then left the hosts no endpoint
    docs = kinds_of(render(renderer, tmp_path, NETWORK_VALUES))
    dep = docs[("Deployment", "plugbay-plugin")]
    kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
    (spread,) = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["maxSkew"] == 1
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"  # a preference: one node still runs them all
    assert spread["labelSelector"] == dep["spec"]["selector"]  # this Deployment's pods
    # an operator's own replaces it
    zones = [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
              "labelSelector": {"matchLabels": {"app": "kv"}}}]
    values = {**NETWORK_VALUES, "network": {**NETWORK_VALUES["network"], "topologySpreadConstraints": zones}}
    dep = kinds_of(render(renderer, tmp_path, values))[("Deployment", "plugbay-plugin")]
    assert dep["spec"]["template"]["spec"]["topologySpreadConstraints"] == zones


def test_pods_take_the_operators_annotations_and_labels_but_keep_their_selector(renderer: Path,
                                                                                tmp_path: Path) -> None:
    # a mesh's injection switch, a scrape annotation, a team label: the chart had no place for them
    extra = {"podAnnotations": {"sidecar.istio.io/inject": "false"},
             "podLabels": {"team": "kv", "app.kubernetes.io/component": "mine", "app.kubernetes.io/instance": "x"}}
    values = {**NETWORK_VALUES, "host": {**NETWORK_VALUES["host"], **extra},
              "network": {**NETWORK_VALUES["network"], **extra}}
    docs = render(renderer, tmp_path, values)
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert len(deployments) == 2
    for dep in deployments:
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
        meta = dep["spec"]["template"]["metadata"]
        assert meta["annotations"] == {"sidecar.istio.io/inject": "false"}
        assert meta["labels"]["team"] == "kv"
        # a selector key given there would leave the Deployment selecting no pod (or the policy another's)
        assert dep["spec"]["selector"]["matchLabels"].items() <= meta["labels"].items()
        assert meta["labels"]["app.kubernetes.io/component"] in ("host", "plugin")
    # none given: no annotations at all
    assert not [d for d in render(renderer, tmp_path, NETWORK_VALUES)
                if d["kind"] == "Deployment" and "annotations" in d["spec"]["template"]["metadata"]]


@pytest.mark.parametrize("replicas, sets, budget", [
    (3, (), True), (2, (), True), (1, (), False), (0, (), False), (1, ("network.replicas=2",), True)],
    ids=["3", "2", "1", "0", "2-from-set"])
def test_a_plugin_of_several_replicas_gets_a_disruption_budget(renderer: Path, tmp_path: Path, replicas: int,
                                                               sets: tuple[str, ...], budget: bool) -> None:
    # a node drain evicts every pod the budget allows: with none, all replicas of the shared plugin may go at
    # once and every host's calls fail with no endpoint; one replica gets none (it would block no drain anyway)
    values = {**NETWORK_VALUES, "network": {**NETWORK_VALUES["network"], "replicas": replicas}}
    docs = kinds_of(render(renderer, tmp_path, values, sets=sets))
    budgets = [doc for (kind, _), doc in docs.items() if kind == "PodDisruptionBudget"]
    assert len(budgets) == (1 if budget else 0), sorted(docs)
    for pdb in budgets:
        kubernetes_validate.validate(pdb, K8S_VERSION, strict=True)
        dep = docs[("Deployment", "plugbay-plugin")]
        assert pdb["metadata"]["namespace"] == dep["metadata"]["namespace"] == "plugins"
        # pods running but not ready (a crash loop) are evicted anyway: by default the budget refuses them while
        # too few are ready, so it would hold every node drain for as long as the plugin stays broken
        assert pdb["spec"] == {"maxUnavailable": 1, "selector": dep["spec"]["selector"],
                               "unhealthyPodEvictionPolicy": "AlwaysAllow"}
        # it counts the plugin's pods only, not the host's
        host = docs[("Deployment", "plugbay-host")]["spec"]["template"]["metadata"]["labels"]
        assert not pdb["spec"]["selector"]["matchLabels"].items() <= host.items()


@pytest.mark.parametrize("values", [NETWORK_VALUES, SIDECAR_VALUES, SERVE_VALUES], ids=["network", "sidecar", "serve"])
def test_image_pull_secrets_reach_every_pod_the_chart_makes(renderer: Path, tmp_path: Path,
                                                            values: dict[str, Any]) -> None:
    # a host or plugin image in a private registry: without them every pod stays in ImagePullBackOff
    secrets = [{"name": "regcred"}, {"name": "mirror"}]
    docs = render(renderer, tmp_path, {**values, "imagePullSecrets": secrets})
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
    assert pods and all(pod.get("imagePullSecrets") == secrets for pod in pods)
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    # none given: no field at all
    assert not [d for d in render(renderer, tmp_path, values)
                if d["kind"] == "Deployment" and "imagePullSecrets" in d["spec"]["template"]["spec"]]


DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize("tag, expected", [("", "{repo}@" + DIGEST), ("2.1", "{repo}:2.1@" + DIGEST)],
                         ids=["digest", "tag-and-digest"])
def test_images_can_be_pinned_by_digest(renderer: Path, tmp_path: Path, tag: str, expected: str) -> None:
    # an operator who deploys by digest (an admission policy may demand it) had no way to: the chart wrote
    # repository:tag, and a digest put in the tag rendered repository:sha256:..., no image reference at all
    values: dict[str, Any] = {
        **NETWORK_VALUES, "network": {**NETWORK_VALUES["network"], "image": {"repository": "example.com/kv-plugin"}},
        "host": {"enabled": True, "image": {"repository": "example.com/my-host"}},
        "sidecar": {"enabled": True, "image": {"repository": "example.com/kv-py"}}}
    for part in ("host", "network", "sidecar"):
        values[part]["image"].update({"tag": tag, "digest": DIGEST})
    docs = render(renderer, tmp_path, values)
    plugin_pod = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "plugbay-plugin")
    assert plugin_pod["spec"]["template"]["spec"]["containers"][0]["image"] == expected.format(
        repo="example.com/kv-plugin")
    host_pod = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "plugbay-host")
    assert [c["image"] for c in host_pod["spec"]["template"]["spec"]["containers"]] == [
        expected.format(repo="example.com/my-host"), expected.format(repo="example.com/kv-py")]
    # a digest that is none fails the render, naming the value
    values["sidecar"]["image"]["digest"] = "latest"
    with pytest.raises(RuntimeError, match=r'sidecar.image.digest must be sha256: followed by 64 lowercase hex digits'
                                           r'.*, not "latest"'):
        render(renderer, tmp_path, values)


def test_a_policy_for_hosts_deployed_elsewhere_admits_the_peers_named(renderer: Path, tmp_path: Path) -> None:
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}},
              "podSelector": {"matchLabels": {"app": "billing"}}}]
    values = {"network": {**{k: v for k, v in NETWORK_VALUES["network"].items() if k != "networkPolicy"},
                          "networkPolicy": {"extraFrom": peers}}}
    docs = render(renderer, tmp_path, values)
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    kubernetes_validate.validate(policy, K8S_VERSION, strict=True)
    # those peers only: no chart host runs, and a pod labelled as one (any pod may carry labels) is no peer
    assert policy["spec"]["ingress"][0]["from"] == peers
    assert not [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "plugbay-host"]
    flat = " ".join(render_notes(renderer, tmp_path, values).split())
    assert ("admits only the peers in network.networkPolicy.extraFrom: any other host's connection is dropped"
            in flat)
    # and with the policy off, hosts elsewhere need no peer list
    off = {"network": {**values["network"], "networkPolicy": {"enabled": False}}}
    assert not [d for d in render(renderer, tmp_path, off) if d["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize("release, values", [("1kv", {}), ("kv.prod", {}), ("kv", {"fullnameOverride": "2-kv"}),
                                             ("kv", {"fullnameOverride": "kv.plugins"})])
def test_a_service_name_kubernetes_refuses_fails_the_render(renderer: Path, tmp_path: Path, release: str,
                                                             values: dict[str, Any]) -> None:
    # helm accepts these release names, and every other object takes the name; the API server refused the
    # plugin's Service only, after the install had made the rest
    with pytest.raises(RuntimeError, match=r"the plugin's Service name \".*-plugin\" is no DNS-1035 label .*"
                                           r"set fullnameOverride"):
        render(renderer, tmp_path, {**NETWORK_VALUES, **values}, release=release)
    # without network mode there is no Service, and the names are fine
    assert render(renderer, tmp_path, values, release=release)


@pytest.mark.parametrize("values, sets", [
    ({"podAnnotations": {"prometheus.io/scrape": True, "prometheus.io/port": 8080, "big": 1000680000},
      "podLabels": {"tier": 3, "canary": False, "ratio": 0.5}}, ()),
    ({}, ("{part}.podAnnotations.prometheus\\.io/scrape=true", "{part}.podAnnotations.prometheus\\.io/port=8080",
          "{part}.podAnnotations.big=1000680000", "{part}.podLabels.tier=3", "{part}.podLabels.canary=false",
          "{part}.podLabels.ratio=0.5"))], ids=["values-file", "set"])
def test_pod_annotations_and_labels_render_as_strings(renderer: Path, tmp_path: Path, values: dict[str, Any],
                                                      sets: tuple[str, ...]) -> None:
    # annotations and labels are strings: a number or boolean rendered bare (prometheus.io/port: 8080, --set
    # ...scrape=true) is a pod the API server refuses
    values = {**NETWORK_VALUES, "host": {**NETWORK_VALUES["host"], **values},
              "network": {**NETWORK_VALUES["network"], **values}}
    sets = tuple(s.format(part=part) for part in ("host", "network") for s in sets)
    deployments = [d for d in render(renderer, tmp_path, values, sets=sets) if d["kind"] == "Deployment"]
    assert len(deployments) == 2
    for dep in deployments:
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
        meta = dep["spec"]["template"]["metadata"]
        assert meta["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": "8080",
                                       "big": "1000680000"}
        assert {k: meta["labels"][k] for k in ("tier", "canary", "ratio")} == {"tier": "3", "canary": "false",
                                                                              "ratio": "0.5"}


def test_a_pod_annotation_given_as_a_map_fails_the_render(renderer: Path, tmp_path: Path) -> None:
    # --set with the key's dots unescaped makes a map of prometheus: {io/port: 8080}: say how to write it
    with pytest.raises(RuntimeError, match=r"network.podAnnotations.prometheus must be a string, not a map: with "
                                           r"--set, escape the dots of a key such as prometheus\\.io/port"):
        render(renderer, tmp_path, NETWORK_VALUES, sets=("network.podAnnotations.prometheus.io/port=8080",))
