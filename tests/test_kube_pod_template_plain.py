"""A pod_template is taken as plain JSON-like data, whatever Mapping and Sequence types it was built of.

The manifest rules (pods.merge, the restartPolicy and namespace checks) work on dicts and lists: a spec
given as a collections.UserDict or a MappingProxyType was not merged but replaced the runner's spec
whole, losing restartPolicy Never (the API then defaults it to Always) and every secure default. The
runner converts the template when made; what has no JSON form is refused, naming where it is."""

from __future__ import annotations

import collections
import threading
import types
from typing import Any

import pytest

from plugbay.errors import ConfigError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.kubernetes import KubernetesRunner
from tests.kube_standin.fixtures import kubeconfig, standin, testapp  # noqa: F401
from tests.kube_standin.server import StandIn

pytestmark = pytest.mark.kubernetes


def test_a_userdict_spec_is_merged_with_the_runners(standin: StandIn, kubeconfig: str,  # noqa: F811
                                                    testapp: str) -> None:  # noqa: F811
    container = types.MappingProxyType({"name": "x", "env": (collections.UserDict({"name": "A", "value": "1"}),)})
    template = types.MappingProxyType({"spec": collections.UserDict({"priorityClassName": "low",
                                                                     "containers": [container]})})
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig, namespace="default", start_timeout=60,
                              pod_template=template)
    try:
        runner.start(LaunchSpec(env={"BASIC_PLUGIN": "hello"}))
        pod: Any = standin.store.get("default", runner.pod_name)
        spec = pod["spec"]
        assert spec["restartPolicy"] == "Never" and spec["priorityClassName"] == "low"
        assert spec["automountServiceAccountToken"] is False
        plugin = spec["containers"][0]
        assert plugin["name"] == "plugin"
        assert {"name": "A", "value": "1"} in plugin["env"]
        secure = plugin["securityContext"]
        assert secure["runAsNonRoot"] is True and secure["readOnlyRootFilesystem"] is True
        assert secure["allowPrivilegeEscalation"] is False and secure["capabilities"] == {"drop": ["ALL"]}
    finally:
        runner.kill(0)


def test_a_userdict_spec_saying_always_is_refused(standin: StandIn, kubeconfig: str) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match="restartPolicy 'Always'"):
        KubernetesRunner("example.com/kv:1", kubeconfig=kubeconfig,
                         pod_template={"spec": collections.UserDict({"restartPolicy": "Always"})})


@pytest.mark.parametrize("template, where", [
    ({"spec": {"containers": [{"name": "a", "x": threading.Lock()}]}},
     r"pod_template\['spec'\]\['containers'\]\[0\]\['x'\] is <unlocked"),
    ({"spec": {"nodeSelector": {1: "a"}}}, r"pod_template\['spec'\]\['nodeSelector'\] has the key 1 \(int\)"),
    ({"metadata": {"labels": {"a": b"b"}}}, r"pod_template\['metadata'\]\['labels'\]\['a'\] is b'b' \(bytes\)"),
    ({"spec": {"tolerations": {"a", "b"}}}, r"\['tolerations'\] is .* \(set\)"),
])
def test_what_has_no_json_form_is_refused_by_path(kubeconfig: str, template: Any, where: str) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match=where + ".*pass plain dicts"):
        KubernetesRunner("example.com/kv:1", kubeconfig=kubeconfig, pod_template=template)


def test_a_template_containing_itself_is_refused(kubeconfig: str) -> None:  # noqa: F811
    spec: dict[str, Any] = {}
    spec["affinity"] = spec
    with pytest.raises(ConfigError, match=r"nests deeper than 64 levels \(or contains itself\), at .*\['affinity'\]"):
        KubernetesRunner("example.com/kv:1", kubeconfig=kubeconfig, pod_template={"spec": spec})


@pytest.mark.parametrize("part", ["spec", "metadata"])
def test_a_null_spec_or_metadata_is_refused(kubeconfig: str, part: str) -> None:  # noqa: F811
    # YAML's `spec:` with nothing under it: merged, it replaced the runner's spec and start() hit a TypeError
    with pytest.raises(ConfigError, match=f"pod_template's {part} must be a dict, got None"):
        KubernetesRunner("example.com/kv:1", kubeconfig=kubeconfig, pod_template={part: None})
