"""charts/plugbay: rendered with a Go text/template + sprig renderer (no helm binary here),
validated against the Kubernetes schemas, lint-style checks, and RBAC equal to the runner's."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from plugbay.runners.kubernetes import RBAC_RULES

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "plugbay"
DOCS = (REPO / "README.md", REPO / "docs" / "kubernetes.md")
K8S_VERSION = "1.30.0"
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@pytest.fixture(scope="module")
def renderer() -> Path:
    from tests.gobuild import GoUnavailableError, build_go

    try:
        return build_go("helmrender")
    except GoUnavailableError as exc:
        pytest.skip(f"the Go toolchain is missing: {exc}")


def render(renderer: Path, tmp_path: Path, values: dict[str, Any] | None = None,
           release: str = "plugbay", namespace: str = "hosts") -> list[dict[str, Any]]:
    cmd = [str(renderer), "-chart", str(CHART), "-release", release, "-namespace", namespace]
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


HOST_VALUES = {"host": {"enabled": True, "image": {"repository": "example.com/my-host", "tag": "1.2"},
                        "env": [{"name": "A", "value": "1"}], "resources": {"limits": {"memory": "256Mi"}},
                        "nodeSelector": {"kubernetes.io/os": "linux"}},
               "rbac": {"extraSubjects": [{"kind": "User", "name": "alice",
                                           "apiGroup": "rbac.authorization.k8s.io"}]},
               "serviceAccount": {"annotations": {"example.com/role": "plugins"}}}


def test_default_render_is_rbac_only(renderer: Path, tmp_path: Path) -> None:
    kinds = by_kind(render(renderer, tmp_path))
    assert sorted(kinds) == ["Role", "RoleBinding", "ServiceAccount"]


def test_role_matches_what_the_runner_calls(renderer: Path, tmp_path: Path) -> None:
    role = by_kind(render(renderer, tmp_path))["Role"]
    rules = {}
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""]
        for resource in rule["resources"]:
            rules[resource] = tuple(sorted(rule["verbs"]))
    assert rules == {res: tuple(sorted(verbs)) for res, verbs in RBAC_RULES}
    # an in-cluster host does not port-forward
    role = by_kind(render(renderer, tmp_path, {"rbac": {"portForward": False}}))["Role"]
    assert {r for rule in role["rules"] for r in rule["resources"]} == \
        {res for res, _ in RBAC_RULES} - {"pods/portforward"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_readme_lists_the_same_permissions(doc: Path) -> None:
    table = dict(re.findall(r"^\| `([a-z/]+)` \| ([a-z, ]+) \|$", doc.read_text(), re.M))
    assert table == {res: ", ".join(verbs) for res, verbs in RBAC_RULES}


@pytest.mark.parametrize("values", [None, HOST_VALUES, {"pluginNamespace": "plugins", "fullnameOverride": "pb"},
                                    {"serviceAccount": {"create": False, "name": "existing"}}])
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
    assert set(values) == {"nameOverride", "fullnameOverride", "pluginNamespace", "serviceAccount", "rbac", "host"}
    for variant in (None, HOST_VALUES, {"fullnameOverride": "x" * 80}):
        for doc in render(renderer, tmp_path, variant):
            name = doc["metadata"]["name"]
            assert len(name) <= 63 and DNS_1123.match(name), name
            labels = doc["metadata"]["labels"]
            for key in ("helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
                        "app.kubernetes.io/managed-by", "app.kubernetes.io/version"):
                assert key in labels, (doc["kind"], key)
