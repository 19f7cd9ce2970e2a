"""A pod going away while the runner's watch cannot tell: its log is not retried, and kill() does not wait.

The watch opens anew every WATCH_SECONDS, listing the pod as it is then; a pod deleted just before a watch
began is in no event of it. The stand-in holds the next pod watch (``hold``) so that every deletion
falls in that gap. kill() deleting its pod must then still end soon: it reads the pod rather than waiting
on a watch that says nothing (it waited for it, grace + 30 s), and stops reopening the pod's log
before the delete (it retried the deleted pod's 404 with backoffs, then warned that it gave up). A pod deleted
behind the host's back is told gone by its log's NotFound, which ends the log without a warning.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid

import pytest

pytest.importorskip("kubernetes")

from plugbay.runners.base import LaunchSpec  # noqa: E402
from plugbay.runners.kubernetes import KubernetesRunner  # noqa: E402
from plugbay.runners.kubernetes.watch import WATCH_SECONDS  # noqa: E402
from tests.kube_standin.server import StandIn  # noqa: E402
from tests.kube_standin.fixtures import server  # noqa: E402, F401 - the test's own stand-in
from tests.procs import live_with_env  # noqa: E402
from tests.thread_util import until  # noqa: E402

pytestmark = pytest.mark.kubernetes
MARK = "PLUGBAY_TEST_DELETED_LOG"
HANDSHAKE = "1|1|tcp|127.0.0.1:4000|grpc"
GRACE = 2.0  # kill()'s default: it waited grace + 30 s for a deletion its watch missed




def _running(server: StandIn, tag: str) -> KubernetesRunner:
    """A started runner whose next pod watch the stand-in holds: the watch tells it nothing from now on."""
    runner = KubernetesRunner("no-engine/x:1", kubeconfig=server.kubeconfig_path, env={MARK: tag}, command=[
        sys.executable, "-c", f"import time\nprint({HANDSHAKE!r}, flush=True)\ntime.sleep(60)\n"])
    runner.start(LaunchSpec(env={}, deadline=time.monotonic() + 60))
    assert next(runner.stdout_lines()) == HANDSHAKE
    server.hold("watch", "pods")
    assert server.holding.wait(WATCH_SECONDS + 30), "the runner's watch was not opened anew"
    return runner


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    # urllib3's too: the held watch, cut by kill(), was "Retrying (...)" at WARNING (test_kube_api_retries_quiet)
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _watched(server: StandIn, caplog: pytest.LogCaptureFixture) -> tuple[str, KubernetesRunner, int]:
    """A running pod's tag and runner, the log requests so far, WARNINGs captured from here on."""
    tag = uuid.uuid4().hex
    runner = _running(server, tag)
    caplog.set_level(logging.WARNING)
    return tag, runner, server.calls[("get", "pods/log")]


@pytest.mark.timeout(120)
def test_kill_ends_without_the_watch_and_never_reopens_the_deleted_pods_log(
        server: StandIn, caplog: pytest.LogCaptureFixture) -> None:
    tag, runner, logs_before = _watched(server, caplog)
    began = time.monotonic()
    try:
        runner.kill(GRACE)
    finally:
        took = time.monotonic() - began
        runner.kill(0)
    # the bound that matters: the watch's next period (the old wait sat out grace + 30 s)
    assert took < WATCH_SECONDS, took
    assert server.calls[("get", "pods/log")] == logs_before  # its log was not asked for again
    assert server.calls[("delete", "pods")] == 1 and server.store.get("default", runner.pod_name) is None
    assert not _warnings(caplog)
    assert until(lambda: not live_with_env(MARK, tag), 30), "the pod's process outlived its deletion"


@pytest.mark.timeout(120)
def test_a_pod_deleted_behind_the_host_is_gone_by_its_logs_not_found(
        server: StandIn, caplog: pytest.LogCaptureFixture) -> None:
    tag, runner, logs_before = _watched(server, caplog)
    try:
        assert server.delete_pod("default", runner.pod_name)
        # only the log says so (the held watch says nothing): its reopen's NotFound is the pod's end
        assert runner.wait(timeout=60) == -1
        assert server.calls[("get", "pods/log")] == logs_before + 1  # one reopen, answered 404: not retried
        assert not _warnings(caplog)
    finally:
        runner.kill(0)
    assert ("delete", "pods") not in server.calls  # the runner knew its pod gone: no delete sent
    assert until(lambda: not live_with_env(MARK, tag), 30), "the pod's process outlived its deletion"
