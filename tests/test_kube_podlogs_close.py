"""Closing a pod's log stream (detach, kill) while its thread reads or reopens it.

The log thread reopens a broken stream while the pod runs. A close() that came while the reopen
waited for its answer shut only the stream before it: the reopened one was then read on until the
pod ended, close() sat out its whole join and the line queues never got their end.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("kubernetes")

from plugbay.runners.base import LaunchSpec  # noqa: E402
from plugbay.runners.kubernetes import KubernetesRunner  # noqa: E402
from plugbay.core.transport.lines import drain  # noqa: E402
from plugbay.runners.kubernetes.logs import PodLogs  # noqa: E402
from tests.kube_standin.process_fixtures import process_kubeconfig, process_standin  # noqa: E402,F401 - fixtures
from tests.kube_standin.server import StandIn  # noqa: E402
from tests.thread_util import until  # noqa: E402

pytestmark = pytest.mark.kubernetes
HANDSHAKE = "1|1|tcp|127.0.0.1:4000|grpc"
STAMP = "2026-01-01T00:00:00.000000001Z"


def _klog_threads(name: str = "") -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(f"plugbay-klog-{name}") and t.is_alive()]


def _ends(q: Iterator[str], timeout: float) -> list[str] | None:
    """The lines of a drain() if it ends within ``timeout``; None if it does not."""
    got: list[list[str]] = []
    t = threading.Thread(target=lambda: got.append(list(q)), daemon=True)
    t.start()
    t.join(timeout)
    return got[0] if got else None


class _SocketResponse:
    """A followed log response read off a real socket, as urllib3's; ``shutdown`` only when asked."""

    def __init__(self, sock: socket.socket, with_shutdown: bool) -> None:
        self.connection = type("Conn", (), {"sock": sock})()
        if with_shutdown:
            self.shutdown = lambda: sock.shutdown(socket.SHUT_RD)

    def stream(self, amt: Any = None, decode_content: bool = False) -> Iterator[bytes]:
        while data := self.connection.sock.recv(4096):
            yield data

    def release_conn(self) -> None:
        pass


@pytest.mark.timeout(120)
@pytest.mark.parametrize("answered", [True, False], ids=["answered-during-detach", "never-answered"])
def test_detach_during_a_log_reopen_ends_the_reopen_and_the_log_thread(server: StandIn, kubeconfig: str,
                                                                       answered: bool) -> None:
    """Answered: the reopened stream was read on. Never answered: detach() waited out the reopen's api_timeout."""
    program = f"import time\nprint('log line', flush=True)\nprint({HANDSHAKE!r}, flush=True)\ntime.sleep(90)\n"
    # api_timeout 20: the old close() waited up to 45 s for the log thread
    runner = KubernetesRunner("no-engine/x:1", kubeconfig=kubeconfig, command=[sys.executable, "-c", program],
                              start_timeout=20, api_timeout=20)
    runner.start(LaunchSpec(env={}))
    data = runner.reattach_data()
    # the slow API server answers the reopen 1 s into detach(), or only after the test
    release = threading.Timer(1.0 if answered else 60.0, server.release)
    try:
        assert until(lambda: "log line" in runner._logs.tail, 10)
        server.hold("get", "pods/log")
        assert server.cut_logs() == 1  # the stream breaks while the pod runs: the log thread reopens it
        assert server.holding.wait(10)
        release.start()
        detach = threading.Thread(target=runner.detach, daemon=True)
        detach.start()
        detach.join(15)
        assert not detach.is_alive(), "detach() waited on the log thread's reopen"
        assert until(lambda: not _klog_threads(), 10), f"the log thread outlived detach(): {_klog_threads()}"
        assert _ends(runner.stdout_lines(), 10) == [HANDSHAKE]
        assert _ends(runner.stderr_lines(), 10) == ["log line"]
    finally:
        release.cancel()
        server.release()
        KubernetesRunner.attach(data, kubeconfig=kubeconfig).kill(0)


@pytest.mark.timeout(60)
def test_a_reopen_answered_after_close_is_shut_not_read() -> None:
    """The reopen here ignores the close's cancel (it answers anyway): its stream is shut at once."""
    first_a, first_b = socket.socketpair()
    second_a, second_b = socket.socketpair()
    asked, answer = threading.Event(), threading.Event()

    def reopen(since: int | None) -> _SocketResponse:
        asked.set()
        answer.wait(10)
        return _SocketResponse(second_a, True)

    logs = PodLogs("p-reopened", api_timeout=1)
    try:
        first_b.sendall(f"{STAMP} {HANDSHAKE}\n".encode())
        logs.follow(_SocketResponse(first_a, True), reopen, lambda: True)
        assert next(drain(logs.stdout)) == HANDSHAKE
        first_b.close()  # the stream breaks: the thread reopens
        assert asked.wait(10)
        threading.Timer(0.5, answer.set).start()
        logs.close()
        assert until(lambda: not _klog_threads("p-reopened"), 10), "the stream reopened after close() was read on"
        assert _ends(drain(logs.stderr), 10) == []
    finally:
        answer.set()
        for s in (first_a, first_b, second_a, second_b):
            s.close()


@pytest.mark.timeout(60)
def test_close_ends_a_read_without_httpresponse_shutdown() -> None:
    """urllib3 before 2.3 has no HTTPResponse.shutdown(): close() shuts the connection's socket instead."""
    a, b = socket.socketpair()
    logs = PodLogs("p-no-shutdown", api_timeout=1)
    try:
        b.sendall(f"{STAMP} plain line\n".encode())
        logs.follow(_SocketResponse(a, False), lambda since: None, lambda: False)
        assert until(lambda: "plain line" in logs.tail, 10)
        closing = threading.Thread(target=logs.close, daemon=True)
        closing.start()
        closing.join(10)
        assert not closing.is_alive(), "close() waited on a read it could not end"
        assert until(lambda: not _klog_threads("p-no-shutdown"), 10)
        assert _ends(drain(logs.stderr), 10) == ["plain line"]
    finally:
        a.close()
        b.close()
