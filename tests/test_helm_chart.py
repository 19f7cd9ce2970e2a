"""charts/plugbay: rendered with a Go text/template + sprig renderer (no helm binary here),
validated against the Kubernetes schemas, lint-style checks, and RBAC equal to the runner's."""

from __future__ import annotations

import base64
import posixpath
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from plugbay.network.kubernetes import EndpointSliceResolver
from plugbay.runners.kubernetes import DISCOVERY_RBAC_RULES, RBAC_RULES, sweep

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "plugbay"
DOCS = (REPO / "README.md", REPO / "docs" / "kubernetes.md")
K8S_VERSION = "1.30.0"
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@pytest.fixture(scope="module")
def renderer() -> Path:
    from tests.gobuild import go_program_or_skip

    return go_program_or_skip("helmrender")


def render(renderer: Path, tmp_path: Path, values: dict[str, Any] | None = None,
           release: str = "plugbay", namespace: str = "hosts", sets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    # numbers typed as Helm types them: float64 from values files, int64 from each of ``sets`` (--set)
    cmd = [str(renderer), "-chart", str(CHART), "-release", release, "-namespace", namespace]
    cmd += [arg for s in sets for arg in ("-set", s)]
    if values is not None:
        path = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.yaml"
        path.write_text(yaml.safe_dump(values))
        cmd += ["-values", str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip())
    assert "<no value>" not in out.stdout
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = [d["kind"] for d in docs]
    assert len(kinds) == len(set(kinds)), kinds
    return {d["kind"]: d for d in docs}


PEM = {"crt": "-----BEGIN CERTIFICATE-----\nserver\n-----END CERTIFICATE-----\n",
       "key": "-----BEGIN PRIVATE KEY-----\nkey\n-----END PRIVATE KEY-----\n",
       "ca": "-----BEGIN CERTIFICATE-----\nhost ca\n-----END CERTIFICATE-----\n"}
NETWORK_VALUES: dict[str, Any] = {
    "pluginNamespace": "plugins",
    "host": {"enabled": True, "image": {"repository": "example.com/my-host"}},
    "network": {"enabled": True, "image": {"repository": "example.com/kv-plugin", "tag": "2"},
                "command": ["/plugin/kv-go", "--verbose"], "cookie": "BASIC_PLUGIN=hello", "replicas": 3,
                "tls": {**PEM, "clientSecretName": "host-client-tls"},
                "networkPolicy": {"extraFrom": [{"podSelector": {"matchLabels": {"role": "batch-host"}}}]}}}
SERVE_VALUES: dict[str, Any] = {
    "network": {"enabled": True, "mode": "serve", "image": {"repository": "example.com/kv-py"},
                "args": ["/plugin/plugin.py"], "port": 7001, "tls": {"secretName": "kv-tls"},
                "env": [{"name": "LOG", "value": "debug"}], "networkPolicy": {"enabled": False}}}
SIDECAR_VALUES: dict[str, Any] = {
    "host": {"enabled": True, "image": {"repository": "example.com/my-host"}},
    "sidecar": {"enabled": True, "image": {"repository": "example.com/kv-py"}, "socketDir": "/run/kv/",
                "command": ["python", "/plugin/plugin.py"]}}
HOST_VALUES = {"host": {"enabled": True, "image": {"repository": "example.com/my-host", "tag": "1.2"},
                        "env": [{"name": "A", "value": "1"}], "resources": {"limits": {"memory": "256Mi"}},
                        "nodeSelector": {"kubernetes.io/os": "linux"}},
               "rbac": {"extraSubjects": [{"kind": "User", "name": "alice",
                                           "apiGroup": "rbac.authorization.k8s.io"}]},
               "serviceAccount": {"annotations": {"example.com/role": "plugins"}}}


def test_default_render_is_rbac_only(renderer: Path, tmp_path: Path) -> None:
    kinds = by_kind(render(renderer, tmp_path))
    assert sorted(kinds) == ["Role", "RoleBinding", "ServiceAccount"]


def role_rules(role: dict[str, Any]) -> dict[tuple[str, str], tuple[str, ...]]:
    return {(group, res): tuple(sorted(rule["verbs"])) for rule in role["rules"]
            for group in rule["apiGroups"] for res in rule["resources"]}


IN_CLUSTER_RULES = {("", res): tuple(sorted(verbs)) for res, verbs in RBAC_RULES if res != "pods/portforward"}


def test_role_matches_what_the_runner_calls(renderer: Path, tmp_path: Path) -> None:
    role = by_kind(render(renderer, tmp_path, {"rbac": {"portForward": True}}))["Role"]
    assert role_rules(role) == {("", res): tuple(sorted(verbs)) for res, verbs in RBAC_RULES}


def test_the_default_role_grants_no_port_forward(renderer: Path, tmp_path: Path) -> None:
    # the chart's own subject is an in-cluster ServiceAccount: it dials pod IPs, it never port-forwards
    assert role_rules(by_kind(render(renderer, tmp_path))["Role"]) == IN_CLUSTER_RULES
    values = (CHART / "values.yaml").read_text()
    assert "portForward: false" in values and "OUTSIDE the cluster" in values


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_readme_lists_the_same_permissions(doc: Path) -> None:
    table = dict(re.findall(r"^\| `([a-z/]+)` \| ([a-z, ]+) \|$", doc.read_text(), re.M))
    assert table == {res: ", ".join(verbs) for res, verbs in RBAC_RULES}
    # discovery's rule (network mode) has its own table: API group, resource, verbs
    rows = re.findall(r"^\| `([a-z0-9.]+\.[a-z]+)` \| `([a-z/]+)` \| ([a-z, ]+) \|$", doc.read_text(), re.M)
    assert rows == [(group, res, ", ".join(verbs)) for group, res, verbs in DISCOVERY_RBAC_RULES]


@pytest.mark.parametrize("values, granted", [
    (None, False), ({"rbac": {"discovery": True}}, True), ("network", True), ("network-no-discovery", False),
    ("sidecar", False)])
def test_discovery_rule_only_when_discovery_is_on(renderer: Path, tmp_path: Path, values: Any,
                                                  granted: bool) -> None:
    values = {"network": NETWORK_VALUES, "sidecar": SIDECAR_VALUES,
              "network-no-discovery": {**NETWORK_VALUES, "network": {**NETWORK_VALUES["network"], "discovery": False}},
              }.get(values, values) if isinstance(values, str) else values
    rules = role_rules(next(d for d in render(renderer, tmp_path, values) if d["kind"] == "Role"))
    discovery = {(g, res): tuple(sorted(v)) for g, res, v in DISCOVERY_RBAC_RULES}
    assert rules == ({**IN_CLUSTER_RULES, **discovery} if granted else IN_CLUSTER_RULES)


@pytest.mark.parametrize("values", [None, HOST_VALUES, {"pluginNamespace": "plugins", "fullnameOverride": "pb"},
                                    {"serviceAccount": {"create": False, "name": "existing"}},
                                    NETWORK_VALUES, SERVE_VALUES, SIDECAR_VALUES])
def test_every_manifest_validates_against_the_schemas(renderer: Path, tmp_path: Path,
                                                      values: dict[str, Any] | None) -> None:
    docs = render(renderer, tmp_path, values)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_validation_catches_a_broken_manifest() -> None:
    # The check above can fail: a typo'd field is rejected in strict mode.
    bad = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
           "metadata": {"name": "x"}, "rules": [{"apiGroups": [""], "resource": ["pods"], "verbs": ["get"]}]}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_host_deployment_runs_as_the_bound_service_account(renderer: Path, tmp_path: Path) -> None:
    kinds = by_kind(render(renderer, tmp_path, HOST_VALUES))
    dep, binding, sa = kinds["Deployment"], kinds["RoleBinding"], kinds["ServiceAccount"]
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"] == binding["subjects"][0]["name"]
    assert binding["subjects"][0]["namespace"] == "hosts" and binding["subjects"][1]["name"] == "alice"
    assert binding["roleRef"]["name"] == kinds["Role"]["metadata"]["name"]
    host = pod["containers"][0]
    assert host["image"] == "example.com/my-host:1.2"
    assert {"name": "A", "value": "1"} in host["env"]
    # the downward API facts KubernetesRunner reads for ownerReferences and the host identity
    for name, field in (("POD_NAME", "metadata.name"), ("POD_UID", "metadata.uid"),
                        ("POD_NAMESPACE", "metadata.namespace")):
        assert {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field}}} in host["env"]
    assert host["securityContext"]["runAsNonRoot"] and host["securityContext"]["readOnlyRootFilesystem"]
    assert host["resources"] == {"limits": {"memory": "256Mi"}}
    assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert sa["metadata"]["annotations"] == {"example.com/role": "plugins"}


def test_plugin_namespace_moves_the_role_not_the_subject(renderer: Path, tmp_path: Path) -> None:
    kinds = by_kind(render(renderer, tmp_path, {"pluginNamespace": "plugins"}))
    assert kinds["Role"]["metadata"]["namespace"] == "plugins"
    assert kinds["RoleBinding"]["metadata"]["namespace"] == "plugins"
    assert kinds["RoleBinding"]["subjects"][0]["namespace"] == "hosts"
    assert kinds["ServiceAccount"]["metadata"]["namespace"] == "hosts"


def test_required_host_image_is_enforced(renderer: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="host.image.repository is required when host.enabled"):
        render(renderer, tmp_path, {"host": {"enabled": True}})


def test_lint_structure(renderer: Path, tmp_path: Path) -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2" and meta["name"] == CHART.name
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"]) and meta.get("description")
    assert (CHART / "templates" / "_helpers.tpl").exists()
    values_text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(values_text)
    lines = values_text.splitlines()
    in_security_context = False
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):", line)
        if not m:
            continue
        if m.group(2) == "securityContext":
            in_security_context = True
        elif len(m.group(1)) <= 2:
            in_security_context = False
        if in_security_context and len(m.group(1)) > 2:
            continue  # the fields of a Kubernetes securityContext document themselves
        assert lines[i - 1].strip().startswith("#"), f"values.yaml line {i + 1} has no comment above: {line}"
    assert set(values) == {"nameOverride", "fullnameOverride", "imagePullSecrets", "pluginNamespace", "serviceAccount",
                           "rbac", "host", "network", "sidecar"}
    for variant in (None, HOST_VALUES, {"fullnameOverride": "x" * 80}, NETWORK_VALUES, SIDECAR_VALUES,
                    {**NETWORK_VALUES, "fullnameOverride": "y" * 80}):
        for doc in render(renderer, tmp_path, variant):
            name = doc["metadata"]["name"]
            assert len(name) <= 63 and DNS_1123.match(name), name
            labels = doc["metadata"]["labels"]
            for key in ("helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
                        "app.kubernetes.io/managed-by", "app.kubernetes.io/version"):
                assert key in labels, (doc["kind"], key)


def kinds_of(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_network_mode_deploys_the_plugin_behind_a_service(renderer: Path, tmp_path: Path) -> None:
    docs = kinds_of(render(renderer, tmp_path, NETWORK_VALUES))
    dep, svc = docs[("Deployment", "plugbay-plugin")], docs[("Service", "plugbay-plugin")]
    policy, secret = docs[("NetworkPolicy", "plugbay-plugin")], docs[("Secret", "plugbay-plugin-tls")]
    host = docs[("Deployment", "plugbay-host")]
    for doc in (dep, svc, policy, secret):
        assert doc["metadata"]["namespace"] == "plugins"
    assert dep["spec"]["replicas"] == 3
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (plugin,) = pod["containers"]
    assert plugin["image"] == "example.com/kv-plugin:2"
    assert plugin["command"] == ["python", "-m", "plugbay.network.gateway"]
    assert plugin["args"] == ["--listen", "0.0.0.0:4000", "--cert", "/etc/plugbay/tls/tls.crt",
                              "--key", "/etc/plugbay/tls/tls.key", "--client-ca", "/etc/plugbay/tls/ca.crt",
                              "--cookie", "BASIC_PLUGIN=hello", "--", "/plugin/kv-go", "--verbose"]
    assert plugin["ports"] == [{"name": "grpc", "containerPort": 4000, "protocol": "TCP"}]
    assert plugin["readinessProbe"]["tcpSocket"]["port"] == "grpc"
    assert plugin["securityContext"]["runAsNonRoot"] and plugin["securityContext"]["readOnlyRootFilesystem"]
    mounts = {m["name"]: m["mountPath"] for m in plugin["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["tls"] == "/etc/plugbay/tls" and volumes["tls"]["secret"]["secretName"] == "plugbay-plugin-tls"
    assert pod["automountServiceAccountToken"] is False  # the plugin needs no API access
    # the Secret holds exactly the files the gateway's flags name
    assert secret["type"] == "kubernetes.io/tls"
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == \
        {"tls.crt": PEM["crt"], "tls.key": PEM["key"], "ca.crt": PEM["ca"]}
    # the Service selects exactly the plugin pods, on the named port
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"] == [{"name": "grpc", "port": 4000, "targetPort": "grpc", "protocol": "TCP"}]
    assert svc["spec"]["clusterIP"] == "None"
    # only the host's pods (in the release namespace) and extraFrom reach the plugin's port
    assert policy["spec"]["podSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    (rule,) = policy["spec"]["ingress"]
    host_labels = host["spec"]["template"]["metadata"]["labels"]
    assert rule["from"][0] == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "hosts"}},
                               "podSelector": {"matchLabels": host_labels}}
    assert rule["from"][1] == {"podSelector": {"matchLabels": {"role": "batch-host"}}}
    assert rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    # the host learns the target, and it is one the resolver accepts; it mounts its client certificate
    hc = host["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in hc["env"]}
    assert env["PLUGBAY_NETWORK_TARGET"] == "kubernetes:///plugins/plugbay-plugin:grpc"
    ns, rest = env["PLUGBAY_NETWORK_TARGET"][len("kubernetes:///"):].split("/")
    service, port = rest.split(":")
    assert EndpointSliceResolver(ns, service, port).target == env["PLUGBAY_NETWORK_TARGET"]
    assert {"name": "client-tls", "mountPath": "/etc/plugbay/client-tls", "readOnly": True} in hc["volumeMounts"]
    assert {"name": "client-tls", "secret": {"secretName": "host-client-tls"}} in \
        host["spec"]["template"]["spec"]["volumes"]


def writable_mounts(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """The plugin container and the folders it can write: emptyDir mounts, as a read-only root leaves no other."""
    pod = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-plugin")
               )["spec"]["template"]["spec"]
    (plugin,) = pod["containers"]
    empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    return plugin, [m["mountPath"] for m in plugin["volumeMounts"] if m["name"] in empty and not m.get("readOnly")]


def test_the_plugin_can_write_its_working_folder(renderer: Path, tmp_path: Path) -> None:
    # docs/kubernetes.md's example (the KV plugin stores kv_<key> in its working folder, which is the
    # image's WORKDIR) with the default values: the root is read-only, the WORKDIR and /tmp are not.
    workdir = re.findall(r"^WORKDIR (\S+)$", (REPO / "Dockerfile.plugin").read_text(), re.M)[-1]
    plugin, writable = writable_mounts(render(renderer, tmp_path, NETWORK_VALUES, release="kv"))
    assert plugin["securityContext"]["readOnlyRootFilesystem"] is True
    assert "workingDir" not in plugin
    assert workdir in writable and "/tmp" in writable
    # writableDirs is the whole list: a plugin that writes elsewhere names its folders
    values = {**NETWORK_VALUES, "network": {**NETWORK_VALUES["network"], "writableDirs": ["/tmp", "/var/cache/kv"]}}
    docs = render(renderer, tmp_path, values)
    assert writable_mounts(docs)[1] == ["/tmp", "/var/cache/kv"]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("values", [
    {**SIDECAR_VALUES, "sidecar": {**SIDECAR_VALUES["sidecar"], "socketDir": "/data"}},  # writable already
    {**SIDECAR_VALUES, "sidecar": {**SIDECAR_VALUES["sidecar"], "writableDirs": ["/data", "/tmp", "/data"]}},
    {**NETWORK_VALUES, "network": {**NETWORK_VALUES["network"], "writableDirs": ["/tmp", "/data", "/tmp"]}},
    # one folder written several ways is one folder (Kubernetes compares mount paths cleaned)
    {**SIDECAR_VALUES, "sidecar": {**SIDECAR_VALUES["sidecar"], "writableDirs": ["/data", "/data/", "//data",
                                                                              "/data/.", "/tmp/", "//tmp"]}},
    {**SIDECAR_VALUES, "sidecar": {**SIDECAR_VALUES["sidecar"], "socketDir": "/var/run/plugbay/",
                                   "writableDirs": ["/data", "//var/run/plugbay", "/var/run/./plugbay"]}},
    {**NETWORK_VALUES, "network": {**NETWORK_VALUES["network"], "writableDirs": ["/tmp", "/data", "/data/", "//data",
                                                                              "/tmp/", "/x/../data"]}},
], ids=["sidecar-socket-in-data", "sidecar-repeats", "network-repeats", "sidecar-spellings",
        "sidecar-socket-spellings", "network-spellings"])
def test_a_folder_is_mounted_once_however_often_it_is_named(renderer: Path, tmp_path: Path,
                                                             values: dict[str, Any]) -> None:
    # the API refuses a container with two mounts at one path (the schema check does not see it)
    pods = [d["spec"]["template"]["spec"] for d in render(renderer, tmp_path, values) if d["kind"] == "Deployment"]
    for pod in pods:
        for container in pod["containers"]:
            paths = [re.sub("/+", "/", posixpath.normpath(m["mountPath"])) for m in container.get("volumeMounts", [])]
            assert len(paths) == len(set(paths)), (container["name"], paths)
            assert "/data" in paths or container["name"] == "host", (container["name"], paths)
        names = [v["name"] for v in pod["volumes"]]
        assert len(names) == len(set(names)), names


def test_serve_mode_and_an_existing_secret(renderer: Path, tmp_path: Path) -> None:
    docs = kinds_of(render(renderer, tmp_path, SERVE_VALUES))
    assert not [k for k in docs if k[0] in ("Secret", "NetworkPolicy")]  # given by name; policy off
    pod = docs[("Deployment", "plugbay-plugin")]["spec"]["template"]["spec"]
    (plugin,) = pod["containers"]
    assert "command" not in plugin and plugin["args"] == ["/plugin/plugin.py"]  # the image's own entrypoint
    assert plugin["env"] == [
        {"name": "PLUGBAY_NETWORK_LISTEN", "value": "0.0.0.0:7001"},
        {"name": "PLUGBAY_NETWORK_CERT", "value": "/etc/plugbay/tls/tls.crt"},
        {"name": "PLUGBAY_NETWORK_KEY", "value": "/etc/plugbay/tls/tls.key"},
        {"name": "PLUGBAY_NETWORK_CLIENT_CA", "value": "/etc/plugbay/tls/ca.crt"},
        {"name": "LOG", "value": "debug"}]
    assert {"name": "tls", "secret": {"secretName": "kv-tls"}} in pod["volumes"]
    assert docs[("Service", "plugbay-plugin")]["spec"]["ports"][0]["port"] == 7001


def test_sidecar_shares_a_socket_with_the_host(renderer: Path, tmp_path: Path) -> None:
    docs = kinds_of(render(renderer, tmp_path, SIDECAR_VALUES))
    assert not [k for k in docs if k[0] in ("Service", "NetworkPolicy", "Secret")]
    pod = docs[("Deployment", "plugbay-host")]["spec"]["template"]["spec"]
    host, plugin = pod["containers"]
    assert plugin["name"] == "plugin" and plugin["image"] == "example.com/kv-py:0.1.0"
    assert plugin["command"] == ["python", "/plugin/plugin.py"]
    host_env = {e["name"]: e.get("value") for e in host["env"]}
    plugin_env = {e["name"]: e.get("value") for e in plugin["env"]}
    assert host_env["PLUGBAY_SIDECAR_TARGET"] == "unix:///run/kv/plugin.sock"
    assert plugin_env == {"PLUGBAY_NETWORK_LISTEN": "unix:/run/kv/plugin.sock", "PLUGBAY_NETWORK_INSECURE": "1"}
    shared = {"name": "plugbay-socket", "mountPath": "/run/kv/"}
    assert shared in host["volumeMounts"] and shared in plugin["volumeMounts"]
    assert {"name": "plugbay-socket", "emptyDir": {}} in pod["volumes"]
    # read-only root: the image's working folder (the KV example stores its files there) is an emptyDir
    workdir = re.findall(r"^WORKDIR (\S+)$", (REPO / "Dockerfile.plugin").read_text(), re.M)[-1]
    assert plugin["securityContext"]["readOnlyRootFilesystem"] is True
    empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    assert {workdir, "/tmp"} <= {m["mountPath"] for m in plugin["volumeMounts"] if m["name"] in empty}
    # its /tmp is not the host's: both run as one uid, and the host keeps its private folders there
    tmp_of = {c["name"]: next(m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/tmp") for c in (host, plugin)}
    assert tmp_of["host"] != tmp_of["plugin"]
    mounted = {m["name"] for m in host["volumeMounts"]}
    assert mounted & {m["name"] for m in plugin["volumeMounts"]} == {"plugbay-socket"}


@pytest.mark.parametrize("values, message", [
    ({"network": {"enabled": True}}, "network.image.repository is required when network.enabled"),
    ({"network": {"enabled": True, "image": {"repository": "x"}, "mode": "sidecar"}},
     'network.mode must be "gateway" or "serve", not "sidecar"'),
    ({"network": {"enabled": True, "image": {"repository": "x"}, "command": ["/p"]}},
     r"network.cookie \(KEY=VALUE, the plugin's magic cookie\) is required with network.mode gateway"),
    ({"network": {"enabled": True, "image": {"repository": "x"}, "cookie": "K=V"}},
     "network.command \\(the plugin the gateway runs\\) is required"),
    ({"network": {"enabled": True, "image": {"repository": "x"}, "mode": "serve", "networkPolicy": {"enabled": False}}},
     r"network.tls.crt \(or network.tls.secretName\) is required .*openssl or cert-manager recipe"),
    ({"network": {"enabled": True, "image": {"repository": "x"}, "command": ["/p"], "cookie": "K=V",
                  "tls": {"secretName": "s"}, "writableDirs": ["data"]}},
     'network.writableDirs entries must be absolute paths, not "data"'),
    ({"network": {"enabled": True, "image": {"repository": "x"}, "command": ["/p"], "cookie": "K=V",
                  "tls": {"secretName": "s"}, "writableDirs": ["/etc/plugbay/tls/"]}},
     "network.writableDirs cannot hold /etc/plugbay/tls"),
    *[({"network": {"enabled": True, "image": {"repository": "x"}, "command": ["/p"], "cookie": "K=V",
                    "tls": {"secretName": "s"}, "writableDirs": [folder]}},
       "network.writableDirs cannot hold /etc/plugbay/tls") for folder in ("//etc/plugbay/tls", "/etc/plugbay/tls/x")],
    ({"network": {"enabled": True, "image": {"repository": "x"}, "command": ["/p"], "cookie": "K=V",
                  "tls": {"secretName": "s"}, "writableDirs": ["//"]}},
     "network.writableDirs cannot hold /: the plugin's root stays read-only"),
    ({"host": {"enabled": True, "image": {"repository": "h"}},
      "sidecar": {"enabled": True, "image": {"repository": "x"}, "writableDirs": ["/"]}},
     "sidecar.writableDirs cannot hold /: the sidecar's root stays read-only"),
    ({"network": {"enabled": True, "image": {"repository": "x"}, "command": ["/p"], "cookie": "K=V",
                  "tls": {"secretName": "s"}, "drainSeconds": -1}},
     "network.drainSeconds must be a whole number of seconds, 0 \\(no drain\\) or more, .*not \"-1\""),
    ({"sidecar": {"enabled": True, "image": {"repository": "x"}}}, "sidecar.enabled needs host.enabled"),
    ({"host": {"enabled": True, "image": {"repository": "h"}},
      "sidecar": {"enabled": True, "image": {"repository": "x"}, "writableDirs": ["data"]}},
     'sidecar.writableDirs entries must be absolute paths, not "data"'),
    ({"host": {"enabled": True, "image": {"repository": "h"}}, "sidecar": {"enabled": True}},
     "sidecar.image.repository is required when sidecar.enabled"),
    # each container mounts /tmp already: the API server refuses a second mount there
    *[({"host": {"enabled": True, "image": {"repository": "h"}},
        "sidecar": {"enabled": True, "image": {"repository": "x"}, "socketDir": folder}},
       f'sidecar.socketDir must be an absolute folder other than / and /tmp .*, not "{folder}"')
      for folder in ("/tmp", "/tmp/", "//tmp", "run/plugbay", "/")],
    # the sidecar's socket is writable by its own uid only: a host of another uid cannot connect
    ({"host": {"enabled": True, "image": {"repository": "h"}},
      "sidecar": {"enabled": True, "image": {"repository": "x"}, "securityContext": {"runAsUser": 10002}}},
     r"sidecar.securityContext.runAsUser \(10002\) must equal host.securityContext.runAsUser \(10001\)"),
    # hosts deployed elsewhere and no extraFrom: a policy that admits no pod, so every connection is dropped
    *[({"network": {"enabled": True, "image": {"repository": "x"}, "command": ["/p"], "cookie": "K=V",
                    "tls": {"secretName": "s"}, "networkPolicy": policy}},
       r"network.networkPolicy would admit no pod: without host.enabled its only peers are"
       r" network.networkPolicy.extraFrom, which is empty")
      for policy in ({}, {"extraFrom": []}, {"enabled": True, "extraFrom": None})],
])
def test_network_values_that_cannot_work_fail_the_render(renderer: Path, tmp_path: Path, values: dict[str, Any],
                                                         message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        render(renderer, tmp_path, values)


def test_a_uid_from_a_values_file_equals_the_same_uid_from_set(renderer: Path, tmp_path: Path) -> None:
    # an OpenShift-range uid: Helm reads the file's as float64, --set's as int64; as text they differ
    uid = 1000680000
    values = {"host": {"enabled": True, "image": {"repository": "h"}, "securityContext": {"runAsUser": uid}},
              "sidecar": {"enabled": True, "image": {"repository": "x"}}}
    deployment = by_kind(render(renderer, tmp_path, values, sets=(f"sidecar.securityContext.runAsUser={uid}",)))
    containers = deployment["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert [c["securityContext"]["runAsUser"] for c in containers] == [uid, uid]
    refused = rf"runAsUser \({uid + 1}\) must equal host.securityContext.runAsUser \({uid}\)"
    with pytest.raises(RuntimeError, match=refused):
        render(renderer, tmp_path, values, sets=(f"sidecar.securityContext.runAsUser={uid + 1}",))


def test_plugin_pods_in_another_namespace_are_said_to_outlive_their_host() -> None:
    # no owner reference crosses namespaces and no host's sweep matches a dead host pod's UID: the chart's
    # pluginNamespace and the docs' two-namespace examples must say so, with an operator sweep that works
    import inspect

    from plugbay.runners.kubernetes.owner import HOST_ID
    from plugbay.runners.session import MANAGED, SESSION

    values = (CHART / "values.yaml").read_text()
    assert "costs the owner reference" in values.split("pluginNamespace:")[0]
    doc = (REPO / "docs" / "kubernetes.md").read_text()
    section = doc.split("**Plugin pods in another namespace than the host's leak when the host pod dies.**")[1]
    assert f'labels["{SESSION}"]' in section and f'labels.get("{HOST_ID}")' in section
    assert f'label_selector="{MANAGED}=true"' in section
    assert {"live_sessions", "dry_run"} <= set(inspect.signature(sweep).parameters)
    flat = " ".join(doc.split())  # the two helm examples, whatever the line breaks
    assert flat.count('see "Plugin pods in another namespace" above') == 1
    assert "as above, when their host pod dies without `kill()`" in flat
