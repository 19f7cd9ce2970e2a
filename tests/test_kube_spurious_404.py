"""A 404 that is not the API server's NotFound (a proxy's "404 page not found") proves nothing about the pod.

The runner took any 404 on a read of its pod for "gone": wait() reported an exit (-1) while the plugin
ran, and kill() then sent no delete, leaving the pod running. Only the API server's Status (reason
NotFound, naming the pod) means gone; any other 404 is a failed read, retried as one. And kill() sends
no delete for a pod the watch saw gone on the API server's word (a failing API server made such a kill()
raise 'the pod may still run'). Against the Kubernetes stand-in (pods are local processes).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

pytest.importorskip("kubernetes")

from plugbay.errors import RunnerError  # noqa: E402
from plugbay.runners.base import LaunchSpec  # noqa: E402
from plugbay.runners.kubernetes import KubernetesRunner  # noqa: E402
from tests.kube_standin.process_fixtures import process_kubeconfig, process_standin  # noqa: E402,F401 - fixtures
from tests.kube_standin.server import StandIn  # noqa: E402
from tests.thread_util import until  # noqa: E402

pytestmark = pytest.mark.kubernetes
HANDSHAKE = "1|1|tcp|127.0.0.1:4000|grpc"
PROGRAM = [sys.executable, "-c", f"import time\nprint({HANDSHAKE!r}, flush=True)\ntime.sleep(120)\n"]


@pytest.fixture()
def runner(server: StandIn, kubeconfig: str) -> Iterator[KubernetesRunner]:
    started = KubernetesRunner("no-engine/x:1", kubeconfig=kubeconfig, command=PROGRAM, start_timeout=30,
                               api_timeout=5)
    started.start(LaunchSpec(env={}))
    try:
        yield started
    finally:
        server.allow_all()
        try:
            started.kill(0)
        finally:
            if server.store.get("default", started.pod_name) is not None:
                server.delete_pod("default", started.pod_name, 0)


def _running(server: StandIn, runner: KubernetesRunner) -> bool:
    pod = server.store.get("default", runner.pod_name)
    return pod is not None and (pod.get("status") or {}).get("phase") == "Running"


@pytest.mark.timeout(120)
def test_a_404_page_on_reads_is_a_failed_read_not_an_exit(server: StandIn, runner: KubernetesRunner) -> None:
    assert runner.wait(0) is None
    reads = server.calls.get(("get", "pods"), 0)
    server.page_404("get", "pods")
    server.error_pod_watches(500)  # failing watches: the watch thread reads the pod instead, and gets the page
    assert until(lambda: runner._podwatch.gone or server.calls.get(("get", "pods"), 0) >= reads + 2, 60)
    assert not runner._podwatch.gone and runner.wait(0) is None  # the plugin runs on
    server.allow_all()
    deletes = server.calls.get(("delete", "pods"), 0)
    runner.kill(0)
    assert server.calls.get(("delete", "pods"), 0) == deletes + 1
    assert server.store.get("default", runner.pod_name) is None


@pytest.mark.timeout(120)
def test_a_404_page_on_the_delete_says_the_pod_may_still_run(server: StandIn, runner: KubernetesRunner) -> None:
    server.page_404("delete", "pods")
    with pytest.raises(RunnerError, match=r"deleting pod default/plugbay-x-[0-9a-f]+ failed: 404"):
        runner.kill(0)
    assert _running(server, runner)  # left, and said so: not taken for already gone


@pytest.mark.timeout(120)
def test_kill_of_a_pod_deleted_from_outside_sends_no_delete(server: StandIn, runner: KubernetesRunner) -> None:
    """The watch saw the pod DELETED (the API server's word): kill() sends no delete, so a failing API
    server cannot make it raise 'the pod may still run' for a pod that is gone."""
    server.delete_pod("default", runner.pod_name, 0)
    assert runner.wait(30) is not None and runner._podwatch.gone
    server.fail("delete", "pods")
    deletes = server.calls.get(("delete", "pods"), 0)
    runner.kill(0)
    assert server.calls.get(("delete", "pods"), 0) == deletes
