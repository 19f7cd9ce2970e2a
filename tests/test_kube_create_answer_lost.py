"""A pod create whose answer is a 5xx or 429 may have been stored: kill() must still delete the pod.

The API server answers 504 Timeout ("may still be processing the request") when its request timeout
fires after etcd stored the write, and 500 on an error after it. The pods are local processes on the
Kubernetes stand-in, whose lose_answers knob stores the pod and then answers so.
"""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("kubernetes")

from plugbay.errors import PermissionDeniedError, RunnerError  # noqa: E402
from plugbay.runners.base import LaunchSpec  # noqa: E402
from plugbay.runners.kubernetes import KubernetesRunner  # noqa: E402
from tests.kube_standin.process_fixtures import process_kubeconfig, process_standin  # noqa: E402,F401 - fixtures
from tests.kube_standin.server import StandIn  # noqa: E402
from tests.thread_util import until  # noqa: E402

pytestmark = pytest.mark.kubernetes
SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def _names(server: StandIn) -> list[str]:
    return [p["metadata"]["name"] for p in server.store.list("default", "plugbay.managed=true", "")]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("status", [504, 500])
def test_a_create_answered_5xx_after_it_was_stored_is_deleted_by_kill(server: StandIn, kubeconfig: str,
                                                                       status: int) -> None:
    """Every ApiException from the create cleared the pod's name: kill() deleted nothing, the pod ran on."""
    runner = KubernetesRunner("no-engine/x:1", kubeconfig=kubeconfig, command=SLEEPER, start_timeout=20,
                              api_timeout=5)
    server.lose_answers("create", "pods", status)
    try:
        with pytest.raises(RunnerError, match=rf"create pods in 'default' failed: {status} .*Pod"
                                              rf" default/{runner.pod_name or 'plugbay-x-'}.* may exist all the"
                                              " same: the runner's kill\\(\\) deletes it"):
            runner.start(LaunchSpec(env={}))
        assert runner.pod_name in _names(server)
        server.allow_all()
        runner.kill(0)
        assert until(lambda: runner.pod_name not in _names(server), 15), "kill() left the stored pod"
    finally:
        server.allow_all()
        for name in _names(server):
            server.delete_pod("default", name, 0)


@pytest.mark.timeout(60)
def test_a_refused_create_still_forgets_the_name(server: StandIn, kubeconfig: str) -> None:
    """A 403 stored nothing: the name is dropped, so a kill() deletes no pod of that name."""
    runner = KubernetesRunner("no-engine/x:1", kubeconfig=kubeconfig, command=SLEEPER, start_timeout=20,
                              api_timeout=5)
    server.deny("create", "pods")
    with pytest.raises(PermissionDeniedError) as info:
        runner.start(LaunchSpec(env={}))
    assert "may exist" not in str(info.value) and runner.pod_name == ""
    runner.kill(0)
