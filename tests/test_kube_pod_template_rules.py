"""What a pod_template may not change, and what kill() says of a pod that outlives its deletion.

The runner's pod never restarts (a restarted container is a plugin the host never shook hands with) and
is made in the runner's namespace: a template setting either is refused when the runner is made, naming
the setting to use instead, and the pod is built from the template as it was checked. A pod whose node
is gone is never confirmed deleted: kill()'s warning says how to remove it."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from plugbay.errors import ConfigError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.kubernetes import KubernetesRunner, teardown
from tests.kube_standin.fixtures import kubeconfig, standin, testapp  # noqa: F401
from tests.kube_standin.server import StandIn

pytestmark = pytest.mark.kubernetes


@pytest.mark.parametrize("policy", ["Always", "OnFailure"])
def test_a_template_restart_policy_is_refused(standin: StandIn, kubeconfig: str, policy: str) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match=f"restartPolicy '{policy}'.*must not restart.*Drop restartPolicy"):
        KubernetesRunner("example.com/kv:1", kubeconfig=kubeconfig, pod_template={"spec": {"restartPolicy": policy}})
    assert ("create", "pods") not in standin.calls


def test_a_template_namespace_is_refused(standin: StandIn, kubeconfig: str) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match="metadata.namespace 'other'.*pass namespace='other' to KubernetesRunner"):
        KubernetesRunner("example.com/kv:1", kubeconfig=kubeconfig, namespace="default",
                         pod_template={"metadata": {"namespace": "other"}})


def test_a_template_null_restart_policy_is_named_as_null(standin: StandIn, kubeconfig: str) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match="sets spec.restartPolicy to null, but"):
        KubernetesRunner("example.com/kv:1", kubeconfig=kubeconfig, pod_template={"spec": {"restartPolicy": None}})


def test_a_template_naming_the_runners_namespace_is_taken(standin: StandIn, kubeconfig: str,  # noqa: F811
                                                          testapp: str) -> None:  # noqa: F811
    # `kubectl get pod -o yaml` output carries metadata.namespace: the runner's own is no conflict
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig, namespace="default", start_timeout=60,
                              pod_template={"metadata": {"namespace": "default", "labels": {"a": "b"}}})
    try:
        runner.start(LaunchSpec(env={"BASIC_PLUGIN": "hello"}))
        pod: Any = standin.store.get("default", runner.pod_name)
        assert pod["metadata"]["namespace"] == "default" and pod["metadata"]["labels"]["a"] == "b"
    finally:
        runner.kill(0)


def test_a_template_may_say_never(standin: StandIn, kubeconfig: str, testapp: str) -> None:  # noqa: F811
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig, start_timeout=60,
                              pod_template={"spec": {"restartPolicy": "Never"}, "metadata": {"labels": {"a": "b"}}})
    try:
        runner.start(LaunchSpec(env={"BASIC_PLUGIN": "hello"}))
        pod: Any = standin.store.get(runner.namespace, runner.pod_name)
        assert pod["spec"]["restartPolicy"] == "Never" and pod["metadata"]["labels"]["a"] == "b"
    finally:
        runner.kill(0)


def test_the_pod_is_built_from_the_template_as_checked(standin: StandIn, kubeconfig: str,  # noqa: F811
                                                       testapp: str) -> None:  # noqa: F811
    # the rules are checked when the runner is made (options.py); build_pod no longer rewrites what breaks
    # them, so a caller's later change to its own dict must not reach the pod (it was rewritten, or seen)
    template: dict[str, Any] = {"metadata": {"labels": {"a": "b"}}, "spec": {"priorityClassName": "x"}}
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig, namespace="default", start_timeout=60,
                              pod_template=template)
    template["metadata"]["labels"]["a"] = "changed"
    template["metadata"]["namespace"] = "other"
    template["spec"]["restartPolicy"] = "Always"
    try:
        runner.start(LaunchSpec(env={"BASIC_PLUGIN": "hello"}))
        pod: Any = standin.store.get("default", runner.pod_name)
        assert pod["metadata"]["labels"]["a"] == "b" and pod["spec"]["restartPolicy"] == "Never"
        assert pod["spec"]["priorityClassName"] == "x"
    finally:
        runner.kill(0)


def test_a_pod_outliving_its_deletion_is_named_with_the_way_out(standin: StandIn, kubeconfig: str,  # noqa: F811
                                                                testapp: str, caplog: pytest.LogCaptureFixture,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(teardown, "GONE_WAIT", 1.0)  # the wait's length is not what is tested
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig, start_timeout=60)
    runner.start(LaunchSpec(env={"BASIC_PLUGIN": "hello"}))
    namespace, name = runner.namespace, runner.pod_name
    standin.lose_node()
    try:
        with caplog.at_level(logging.WARNING, logger="plugbay.runners.kubernetes"):
            runner.kill(0)
        assert f"pod {namespace}/{name} still exists" in caplog.text
        assert f"kubectl delete pod -n {namespace} {name} --force --grace-period=0" in caplog.text
        assert "node may be gone" in caplog.text
    finally:
        standin.allow_all()
        standin.delete_pod(namespace, name, grace=0)
