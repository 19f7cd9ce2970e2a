"""A pod the cluster marked Failed with no exit code recorded (its node gone: the pod garbage collector's
DisruptionTarget, its container's status left as last reported) is said to have failed, not to have exited
with code -1 as a local process killed by SIGHUP does, and the owner is sent to the pod's events.

The pods are local processes on the Kubernetes stand-in (no engine needed).
"""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("kubernetes")

from plugbay.runners.attached import UNKNOWN_EXIT_CODE  # noqa: E402
from plugbay.runners.base import LaunchSpec  # noqa: E402
from plugbay.runners.kubernetes import KubernetesRunner  # noqa: E402
from tests.kube_standin.process_fixtures import process_kubeconfig, process_standin  # noqa: E402,F401 - fixtures
from tests.kube_standin.server import StandIn  # noqa: E402

pytestmark = pytest.mark.kubernetes


@pytest.mark.timeout(90)
def test_a_pod_failed_with_no_exit_code_is_said_to_have_failed(server: StandIn, kubeconfig: str) -> None:
    runner = KubernetesRunner("no-engine/x:1", kubeconfig=kubeconfig, start_timeout=20,
                              command=[sys.executable, "-c", "import time; time.sleep(300)"])
    runner.start(LaunchSpec(env={}))
    try:
        assert runner.wait(0) is None
        server.fail_pod_unrecorded(runner.namespace, runner.pod_name, "DeletionByPodGC",
                                   "PodGC: node no longer exists")
        assert runner.wait(30) == UNKNOWN_EXIT_CODE
        words = runner.exit_words(UNKNOWN_EXIT_CODE)
        assert f"ended with no exit code: its pod {runner.id} failed before its container's end was recorded" \
            in words, words
        assert f"`kubectl get events -n {runner.namespace}`" in words, words
        assert "SIGHUP" not in words and "was deleted" not in words, words
    finally:
        runner.kill(0)
