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


TICKER = "import time\ni = 0\nwhile True:\n    print('line', i, flush=True); i += 1; time.sleep(0.1)\n"


@pytest.mark.timeout(90)
def test_a_log_stream_that_worked_between_cuts_is_reopened_every_time(server: StandIn, kubeconfig: str) -> None:
    """Five reopens were the log's budget for its whole life: the sixth cut, days later, ended it for good."""
    runner = KubernetesRunner("no-engine/x:1", kubeconfig=kubeconfig, command=[sys.executable, "-c", TICKER],
                              start_timeout=20, api_timeout=5)
    runner.start(LaunchSpec(env={}))
    got: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [got.put(line) for line in runner.stderr_lines()], daemon=True)
    reader.start()
    try:
        for cut in range(7):
            assert until(lambda: len(server.log_conns) == 1, 10), f"no log stream before cut {cut + 1}"
            n = got.qsize()
            assert until(lambda: got.qsize() > n, 10), f"no line before cut {cut + 1}"
            assert server.cut_logs() >= 1  # the stream cut before may not have noticed yet
        n = got.qsize()
        assert until(lambda: got.qsize() > n + 3, 10), "the log was given up"
        assert reader.is_alive()
    finally:
        runner.kill(0)
        reader.join(10)


@pytest.mark.timeout(60)
def test_a_log_that_cannot_be_reopened_is_given_up_with_a_warning(server: StandIn, kubeconfig: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """One refused reopen ended the log at once, said only in a debug line."""
    runner = KubernetesRunner("no-engine/x:1", kubeconfig=kubeconfig, command=[sys.executable, "-c", TICKER],
                              start_timeout=20, api_timeout=5)
    runner.start(LaunchSpec(env={}))
    reader = threading.Thread(target=lambda: list(runner.stderr_lines()), daemon=True)
    reader.start()
    try:
        assert until(lambda: len(server.log_conns) == 1 and runner._logs.tail, 10)
        opened = server.calls[("get", "pods/log")]
        server.fail("get", "pods/log")
        with caplog.at_level("WARNING", logger="plugbay.runners.kubernetes"):
            assert server.cut_logs() == 1
            reader.join(15)
        assert not reader.is_alive() and runner.wait(0) is None
        assert server.calls[("get", "pods/log")] - opened == 5  # the five tries, with a backoff between
        assert any("could not be reopened 5 times in a row" in r.getMessage() and "500" in r.getMessage()
                   for r in caplog.records if r.levelname == "WARNING"), caplog.text
    finally:
        server.allow_all()
        runner.kill(0)
        reader.join(10)


@pytest.mark.timeout(60)
def test_a_failed_read_of_the_pod_at_the_logs_first_open_does_not_fail_the_start(server: StandIn,
                                                                                 kubeconfig: str) -> None:
    """The read that checks the log's pod (its UID) after the first open turned one 500 on GET pods into a
    failed start, though the watch had just seen the pod Running: the log is followed all the same."""
    server.fail("get", "pods")
    runner = KubernetesRunner("no-engine/x:1", kubeconfig=kubeconfig, command=[sys.executable, "-c", TICKER],
                              start_timeout=20, api_timeout=2)
    try:
        runner.start(LaunchSpec(env={}))
        assert server.calls.get(("get", "pods"), 0) >= 1  # the read was made, and failed
        assert next(runner.stderr_lines()) == "line 0"
    finally:
        server.allow_all()
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


@pytest.mark.timeout(60)
def test_a_log_reopened_many_times_keeps_one_splitter() -> None:
    # reopens have no bound once a stream passed lines on: what each leaves behind must not pile up
    from plugbay.runners.kubernetes.logs import PodLogs

    class Stream:  # one stamped line, then the stream ends (as a cut connection's does)
        def __init__(self, n: int) -> None:
            self.n = n

        def stream(self, amt: object = None, decode_content: bool = False) -> object:
            yield f"2026-01-01T00:{self.n // 60 % 60:02d}:{self.n % 60:02d}.000000000Z line {self.n}\n".encode()

        def release_conn(self) -> None:
            pass

        def shutdown(self) -> None:
            pass

    opened = [0]

    def reopen(since: int | None) -> Stream:
        opened[0] += 1
        return Stream(opened[0])

    logs = PodLogs("p", 5.0)
    logs.follow(Stream(0), reopen, lambda: opened[0] < 300)
    try:
        assert sum(1 for _ in iter(logs.stderr.get, None)) == 301
        assert opened[0] == 300 and len(logs.splitters) <= 1
    finally:
        logs.close()
