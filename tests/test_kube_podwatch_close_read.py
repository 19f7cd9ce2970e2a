"""PodWatch.close() ends the watch thread's read of the pod under way, not only a watch's head.

Between two watches (and while watches fail, or after a 403) the watch thread reads the pod, each
read bounded by api_timeout. detach() and kill() close the watch and join its thread: a read the API
server holds (the stand-in's stall) kept them waiting for that read's whole api_timeout.
"""

from __future__ import annotations

import sys
import threading
import time

import pytest

pytest.importorskip("kubernetes")

from plugbay.runners.base import LaunchSpec  # noqa: E402
from plugbay.runners.kubernetes import KubernetesRunner  # noqa: E402
from plugbay.runners.kubernetes.watch import WATCH_SECONDS  # noqa: E402
from tests.kube_standin.server import StandIn  # noqa: E402
from tests.kube_standin.fixtures import server  # noqa: E402, F401 - the test's own stand-in
from tests.thread_util import until  # noqa: E402

pytestmark = pytest.mark.kubernetes
HANDSHAKE = "1|1|tcp|127.0.0.1:4000|grpc"
API_TIMEOUT = 60.0  # each read's own bound: far past what detach() may take




@pytest.mark.timeout(150)
def test_detach_ends_the_watch_threads_read_of_the_pod_at_once(server: StandIn) -> None:
    runner = KubernetesRunner("no-engine/x:1", kubeconfig=server.kubeconfig_path, api_timeout=API_TIMEOUT,
                              command=[sys.executable, "-c",
                                       f"import time\nprint({HANDSHAKE!r}, flush=True)\ntime.sleep(60)\n"])
    try:
        runner.start(LaunchSpec(env={}, deadline=time.monotonic() + 60))
        assert next(runner.stdout_lines()) == HANDSHAKE
        reads = server.calls.get(("get", "pods"), 0)
        server.stall("get", "pods")
        # the read that follows each watch (the server ends it after WATCH_SECONDS) is held now
        assert until(lambda: server.calls.get(("get", "pods"), 0) > reads, WATCH_SECONDS + 30)
        began = time.monotonic()
        runner.detach()
        took = time.monotonic() - began
        assert took < API_TIMEOUT / 2, took  # the read's own bound did not end it
        assert not [t.name for t in threading.enumerate() if t.name == f"plugbay-kwatch-{runner.pod_name}"]
    finally:
        server.allow_all()
        runner.kill(0)
    assert server.store.get("default", runner.pod_name) is None
