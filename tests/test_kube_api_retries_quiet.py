"""The pod runner's API calls say nothing at WARNING for what plugbay handles: urllib3's "Retrying (...)".

urllib3 logs a WARNING for each attempt it repeats. A call plugbay's bound cut (its socket shut) was
repeated twice more, each failing at once on the passed deadline: three warnings for one timeout that
plugbay reports itself. A call whose connection the server closed unanswered is still tried again, as
the pool's Retry says, only at DEBUG. The API server is the stand-in: a stalled request is taken and
never answered; unstall() closes it unanswered.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("kubernetes")

from plugbay.runners.base import LaunchSpec  # noqa: E402
from plugbay.runners.kubernetes import KubernetesRunner  # noqa: E402
from tests.kube_standin.server import StandIn  # noqa: E402
from tests.kube_standin.fixtures import server  # noqa: E402, F401 - the test's own stand-in
from tests.thread_util import until  # noqa: E402

pytestmark = pytest.mark.kubernetes
HANDSHAKE = "1|1|tcp|127.0.0.1:4000|grpc"




@pytest.fixture
def runner(server: StandIn) -> Iterator[KubernetesRunner]:
    started = KubernetesRunner("no-engine/x:1", kubeconfig=server.kubeconfig_path, api_timeout=1.0, command=[
        sys.executable, "-c", f"import time\nprint({HANDSHAKE!r}, flush=True)\ntime.sleep(60)\n"])
    try:
        started.start(LaunchSpec(env={}, deadline=time.monotonic() + 60))
        assert next(started.stdout_lines()) == HANDSHAKE
        yield started
    finally:
        server.allow_all()
        started.kill(0)


def _retry_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("urllib3")]


@pytest.mark.timeout(60)
def test_a_call_its_bound_cut_is_not_retried_or_warned_of(server: StandIn, runner: KubernetesRunner,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    server.stall("get", "pods")
    caplog.set_level(logging.DEBUG)
    reads = server.calls[("get", "pods")]
    text = runner.diagnose()  # its pod read, cut at api_timeout (1 s): diagnose() says what it knows
    assert "Running" in text
    assert server.calls[("get", "pods")] == reads + 1  # asked once
    assert not _retry_warnings(caplog)
    assert not [r for r in caplog.records if r.name.startswith("urllib3") and "Retrying" in r.getMessage()]


@pytest.mark.timeout(60)
def test_a_connection_closed_unanswered_is_still_tried_again_quietly(server: StandIn, runner: KubernetesRunner,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    runner._pod.timeout = 30.0  # the read waits for the stand-in's close, not for its bound
    server.stall("get", "pods")
    caplog.set_level(logging.DEBUG)
    reads = server.calls[("get", "pods")]
    pods: list[object] = []
    reader = threading.Thread(target=lambda: pods.append(runner._read_pod()))
    reader.start()
    try:
        assert until(lambda: server.calls[("get", "pods")] > reads, 20)
    finally:
        server.unstall()  # the stalled read's connection is closed unanswered; the next is answered
        reader.join(40)
    assert pods and isinstance(pods[0], dict) and pods[0]["metadata"]["name"] == runner.pod_name
    assert server.calls[("get", "pods")] == reads + 2  # tried again, as urllib3's Retry says
    assert not _retry_warnings(caplog)
    assert [r for r in caplog.records if r.name == "plugbay.runners.kubernetes" and r.getMessage().startswith(
        "retrying GET") and r.levelno == logging.DEBUG]
