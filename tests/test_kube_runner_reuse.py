"""A KubernetesRunner runs one pod once: reused after kill() or detach() it refuses to start (it would make
a pod nothing deletes), and a kill() that comes while start() creates the pod still ends with no pod left.

Against the stand-in API server, which runs the pods as real containers.
"""

from __future__ import annotations

import gc
import re
import threading
import time
from urllib.parse import urlparse

import pytest

from plugbay.errors import RunnerError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.kubernetes import KubernetesRunner
from tests.kube_standin.fixtures import kubeconfig, standin, testapp  # noqa: F401
from tests.kube_standin.server import StandIn
from tests.procs import connections_to

pytestmark = pytest.mark.kubernetes
SPEC = LaunchSpec(env={}, labels={"plugbay.plugin": "reuse"})


def pod_names(server: StandIn) -> set[str]:
    return {p["metadata"]["name"] for p in server.store.list("default", "", "")}


def gone_soon(server: StandIn, name: str) -> bool:
    """Whether the pod is gone from the store within a bounded wait (its deletion has a grace period)."""
    for _ in range(120):
        if server.store.get("default", name) is None:
            return True
        time.sleep(0.25)
    return False


@pytest.mark.timeout(180)
@pytest.mark.parametrize("end", ["kill", "detach"])
def test_start_after_kill_or_detach_is_refused(standin: StandIn, kubeconfig: str, testapp: str,  # noqa: F811
                                               end: str) -> None:
    before = pod_names(standin)
    creates = standin.calls.get(("create", "pods"), 0)
    fresh = KubernetesRunner(testapp, kubeconfig=kubeconfig, start_timeout=60)
    getattr(fresh, end)()
    with pytest.raises(RunnerError, match=rf"runner for {testapp} was {end}ed?; a runner runs one pod once:"
                                          " make a new runner"):
        fresh.start(SPEC)
    assert standin.calls.get(("create", "pods"), 0) == creates and pod_names(standin) == before
    used = KubernetesRunner(testapp, kubeconfig=kubeconfig, start_timeout=60)
    used.start(SPEC)
    name = used.pod_name
    try:
        getattr(used, end)()
        with pytest.raises(RunnerError, match=f"was {end}ed?; a runner runs one pod once"):
            used.start(SPEC)
        assert used.pod_name == name and standin.calls[("create", "pods")] == creates + 1
    finally:
        used.kill(0)  # after detach() too: it deletes the pod it saw
    assert gone_soon(standin, name)


@pytest.mark.timeout(180)
def test_a_kill_during_the_create_leaves_no_pod(standin: StandIn, kubeconfig: str,  # noqa: F811
                                                testapp: str) -> None:  # noqa: F811
    """kill() finds no pod yet (404) while the create is on its way; start() deletes what the create made,
    on the API client kill() closed: that delete's connection is closed too, not left to the collector."""
    port = urlparse(standin.url).port
    assert port is not None
    runner = KubernetesRunner(testapp, kubeconfig=kubeconfig, start_timeout=60)
    failed: list[BaseException] = []

    def start() -> None:
        try:
            runner.start(SPEC)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread to check
            failed.append(exc)

    standin.hold("create", "pods")
    starting = threading.Thread(target=start, name="plugbay-test-start")
    gc.disable()  # what start() leaves open must be closed by it, not found later by the collector
    starting.start()
    try:
        assert standin.holding.wait(30)  # the create reached the server and waits there
        runner.kill(0)  # finds nothing by the pod's name yet
        assert standin.store.get("default", runner.pod_name) is None
        standin.release()  # now the create goes through
        starting.join(60)
        assert not starting.is_alive()
        assert connections_to(port) == 0
        assert gone_soon(standin, runner.pod_name)  # not leaked: start() deleted the pod its create made
        assert len(failed) == 1 and isinstance(failed[0], RunnerError), failed
        assert re.search(rf"runner for pod default/{runner.pod_name} was killed while it created the pod;"
                         r" plugbay deleted the pod \(UID [0-9a-f-]+\)\. Make a new runner", str(failed[0]))
    finally:
        gc.enable()
        standin.release()
        starting.join(60)
        standin.delete_pod("default", runner.pod_name)
