"""A pod the cluster ended (evicted, refused by the kubelet at admission: OutOfcpu) is told as such.

Its status.reason and message say why; the error and the diagnosis quote them, and give no handshake
advice (magic cookie, "run it by hand"): the plugin did nothing wrong."""

from __future__ import annotations

import time

import pytest

from plugbay.errors import PluginExitedError, PodFailedError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.kubernetes import KubernetesRunner, pods
from tests.kube_standin.fixtures import kubeconfig, standin, testapp  # noqa: F401
from tests.kube_standin.server import StandIn

pytestmark = pytest.mark.kubernetes
OUT_OF_CPU = "Pod was rejected: Node didn't have enough resource: cpu, requested: 4000, used: 0, capacity: 2000"
LOW_MEMORY = "The node was low on resource: memory. Container plugin was using 900Mi, request is 0."


def _pod(status: dict) -> dict:
    return {"metadata": {"name": "p", "namespace": "plugins"},
            "spec": {"containers": [{"name": "plugin", "image": "kv:1"}]}, "status": status}


ADMISSION = _pod({"phase": "Failed", "reason": "OutOfcpu", "message": OUT_OF_CPU})
EVICTED = _pod({"phase": "Failed", "reason": "Evicted", "message": LOW_MEMORY,
                "containerStatuses": [{"name": "plugin", "restartCount": 0, "state": {"terminated": {
                    "exitCode": 137, "reason": "ContainerStatusUnknown",
                    "message": "The container could not be located when the pod was terminated"}}}]})


@pytest.mark.parametrize("pod,said,advice", [(ADMISSION, "OutOfcpu: " + OUT_OF_CPU, "refused the pod at admission"),
                                             (EVICTED, "Evicted: " + LOW_MEMORY[:-1], "evicted the pod")])
def test_start_failure_says_why_the_cluster_ended_the_pod(pod: dict, said: str, advice: str) -> None:
    error = pods.start_failure(pod, "plugins/p", [], [])
    text = str(error)
    assert isinstance(error, PodFailedError) and isinstance(error, PluginExitedError), text
    assert said in text and advice in text and "resources=" in text
    assert "magic cookie" not in text and "reason: ?" not in text
    assert "ended by the cluster: " + said in pods.describe(pod, False, [], [])


@pytest.mark.parametrize("pod,headline", [
    (ADMISSION, "the cluster refused plugin 'plugins/p''s pod (OutOfcpu): its container never ran. "),
    (EVICTED, "the cluster ended plugin 'plugins/p''s pod (Evicted) before the plugin completed the handshake. ")])
def test_the_headline_names_the_cluster_not_an_exit_code(pod: dict, headline: str) -> None:
    # OutOfcpu's container never ran, an evicted one was killed: neither exited with a code of its own
    text = str(pods.start_failure(pod, "plugins/p", [], []))
    assert text.startswith(headline) and "exited with code" not in text, text


def test_an_eviction_for_the_plugins_own_disk_use_names_its_limit() -> None:
    # the kubelet's words when the container writes past its own limit: requests would not have helped
    over = 'Container plugin exceeded its local ephemeral storage limit "64Mi". '
    text = str(pods.start_failure(_pod({**EVICTED["status"], "message": over}), "plugins/p", [], []))
    assert "ephemeral-storage limit" in text and "write less" in text, text
    assert "give the plugin requests" not in text


def test_a_plugin_that_failed_by_itself_keeps_its_advice() -> None:
    failed = _pod({"phase": "Failed", "containerStatuses": [{"name": "plugin", "state": {"terminated": {
        "exitCode": 1, "reason": "Error"}}}]})
    error = pods.start_failure(failed, "plugins/p", [], [])
    assert type(error) is PluginExitedError and "magic cookie" in str(error)
    assert "ended by the cluster" not in pods.describe(failed, False, [], [])


def test_an_evicted_pod_is_diagnosed_as_evicted(standin: StandIn, kubeconfig: str, testapp: str) -> None:  # noqa: F811
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig, start_timeout=60)
    runner.start(LaunchSpec(env={"BASIC_PLUGIN": "hello"}))
    try:
        standin.evict_pod(runner.namespace, runner.pod_name, LOW_MEMORY)
        deadline = time.monotonic() + 30  # a hang guard only
        while runner.wait(0.2) is None and time.monotonic() < deadline:
            pass
        text = runner.diagnose()
        assert "ended by the cluster: Evicted: " + LOW_MEMORY in text, text
    finally:
        runner.kill(0)
