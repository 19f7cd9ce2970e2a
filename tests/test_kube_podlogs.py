"""The pod runner's log stream when its connection breaks: no line lost, none passed on twice.

The pods are local processes on the Kubernetes stand-in (no engine needed), whose pod logs are
stamped and honour sinceSeconds as the API's; its knobs break the log streams and hold the reopen.
"""

from __future__ import annotations

import queue
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("kubernetes")

from plugbay.runners.base import LaunchSpec  # noqa: E402
from plugbay.runners.kubernetes import KubernetesRunner  # noqa: E402
from tests.kube_standin.podlogs import log_lines, log_since, stamp_now, stamp_ns  # noqa: E402
from tests.kube_standin.process_fixtures import process_kubeconfig, process_standin  # noqa: E402,F401 - fixtures
from tests.thread_util import until  # noqa: E402
from tests.kube_standin.server import StandIn  # noqa: E402

pytestmark = pytest.mark.kubernetes
HANDSHAKE = "1|1|tcp|127.0.0.1:4000|grpc"


@pytest.mark.timeout(60)
def test_lines_printed_while_the_log_stream_was_down_are_not_lost(server: StandIn, kubeconfig: str,
                                                                 tmp_path: Path) -> None:
    """The reopen asked for tailLines=0, the log's end at the reopen: the handshake printed while the
    reopen was under way was lost for good (and start timed out). Lines read before are not repeated."""
    flag = tmp_path / "print-handshake"
    program = (f"import os, time\nprint('log line', flush=True)\nwhile not os.path.exists({str(flag)!r}):"
               f" time.sleep(0.02)\nprint({HANDSHAKE!r}, flush=True)\ntime.sleep(60)\n")
    runner = KubernetesRunner("no-engine/x:1", kubeconfig=kubeconfig, command=[sys.executable, "-c", program],
                              start_timeout=20, api_timeout=5)
    runner.start(LaunchSpec(env={}))
    out: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [out.put(line) for line in runner.stdout_lines()], daemon=True).start()
    try:
        assert until(lambda: "log line" in runner._logs.tail, 10)
        server.hold("get", "pods/log")  # the reopen is answered only once the handshake is in the log
        assert server.cut_logs() == 1
        assert server.holding.wait(10)
        flag.touch()
        box = server.store.box("default", runner.pod_name)
        assert box is not None
        assert until(lambda: HANDSHAKE.encode() in b"".join(box.logs(False, None)), 10)
        server.release()
        assert out.get(timeout=10) == HANDSHAKE
        assert list(runner._logs.tail) == ["log line"]
    finally:
        runner.kill(0)


def test_the_stand_ins_log_is_the_apis() -> None:
    """Stamps as Go's RFC3339Nano; sinceTime in whole seconds, so lines of its second come again."""
    stamp = stamp_now()
    assert stamp.endswith(b"Z") and not stamp.endswith(b"0Z") and stamp_ns(stamp) is not None
    at = stamp_ns(b"2026-12-02T10:00:05.5Z")
    assert at == stamp_ns(b"2026-12-02T10:00:05.500000000Z")
    log = [b"2026-12-02T10:00:04.9Z a\n2026-12-02T10:00:05.1Z b\n2026-12-0", b"2T10:00:05.7Z c\n"]
    assert b"".join(log_lines(iter(log), True, log_since({"sinceTime": "2026-12-02T10:00:05.6Z"}))) == (
        b"2026-12-02T10:00:05.1Z b\n2026-12-02T10:00:05.7Z c\n")
    assert b"".join(log_lines(iter(log), False, None)) == b"a\nb\nc\n"
