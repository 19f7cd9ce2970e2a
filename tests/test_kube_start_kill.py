"""A kill() from another thread while start() opens the pod's log: start() raises, as when the kill
comes earlier, instead of returning a started runner whose pod is being deleted and log shut."""

from __future__ import annotations

import sys
import threading
from typing import Any

import pytest

pytest.importorskip("kubernetes")

from plugbay.errors import EngineUnavailableError, RunnerError  # noqa: E402
from plugbay.runners.base import LaunchSpec  # noqa: E402
from plugbay.runners.kubernetes import KubernetesRunner  # noqa: E402
from tests.kube_standin.process_fixtures import process_kubeconfig, process_standin  # noqa: E402,F401 - fixtures
from tests.kube_standin.server import StandIn  # noqa: E402
from tests.thread_util import until  # noqa: E402

pytestmark = pytest.mark.kubernetes
HANDSHAKE = "1|1|tcp|127.0.0.1:4000|grpc"


@pytest.mark.timeout(90)
def test_a_kill_while_start_opens_the_log_fails_the_start(server: StandIn, kubeconfig: str) -> None:
    program = f"import time\nprint({HANDSHAKE!r}, flush=True)\ntime.sleep(60)\n"
    runner = KubernetesRunner("no-engine/x:1", kubeconfig=kubeconfig, command=[sys.executable, "-c", program],
                              start_timeout=20, api_timeout=5)
    open_log = runner._pod.open_log
    killing: list[threading.Thread] = []

    def open_then_killed(since: int | None, first: bool = False, **bounds: Any) -> Any:
        resp = open_log(since, first=first, **bounds)  # start()'s open has its budget (budget.py)
        if not killing:  # the first open, in start(): the host's kill() comes as its answer does
            killing.append(threading.Thread(target=runner.kill, args=(0,), name="plugbay-test-kill"))
            killing[0].start()
            assert until(lambda: runner._killed, 10)
        return resp

    runner._pod.open_log = open_then_killed  # type: ignore[method-assign]
    try:
        with pytest.raises(RunnerError, match=r"was killed while it started the pod; plugbay deleted it again"):
            runner.start(LaunchSpec(env={}))
    finally:
        for t in killing:
            t.join(60)
        runner.kill(0)
    assert killing and not killing[0].is_alive()
    assert server.store.get("default", runner.pod_name) is None


@pytest.mark.timeout(120)
def test_a_kill_while_start_waits_for_running_ends_the_start_when_the_api_shows_nothing(
        server: StandIn, kubeconfig: str) -> None:
    """The pod's watch and reads hang (a silent API server) and so does the kill()'s delete: the watch never
    shows the pod Running or gone, yet start() ends at the kill, not at its start_timeout (it waited that
    out, 30 s here, before)."""
    program = f"import time\nprint({HANDSHAKE!r}, flush=True)\ntime.sleep(60)\n"
    runner = KubernetesRunner("no-engine/x:1", kubeconfig=kubeconfig, command=[sys.executable, "-c", program],
                              start_timeout=30, api_timeout=2)
    for verb in ("watch", "get", "delete"):
        server.stall(verb, "pods")
    failures: list[BaseException] = []

    def starting() -> None:
        try:
            runner.start(LaunchSpec(env={}))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            failures.append(exc)

    starter = threading.Thread(target=starting, name="plugbay-test-start")
    starter.start()
    try:
        assert until(lambda: server.store.get("default", runner.pod_name) is not None, 20)  # created
        with pytest.raises(EngineUnavailableError, match="may still run"):  # the delete hangs too
            runner.kill(0)
        starter.join(10)  # the kill's delete took its api_timeout (2 s); the start ends with the kill
        assert not starter.is_alive(), "start() still waits for the pod to run after kill()"
    finally:
        server.allow_all()
        starter.join(60)
        runner.force_kill()  # the API answers again: the pod goes
    assert len(failures) == 1 and isinstance(failures[0], RunnerError), failures
    assert "was killed while it started the pod" in str(failures[0])
    assert server.store.get("default", runner.pod_name) is None
