"""api_timeout bounds a whole Kubernetes API call, not only each socket read: an API server (or proxy)
that trickles its answer a byte at a time cannot hold start(), kill(), a reattach or a sweep.

The trickling servers are real sockets on 127.0.0.1. Each sends at most TRICKLE bytes, one per STEP
seconds, and records at which byte the client hung up; with only per-read timeouts the client reads
them all (and times out only after the trickle stops), so "hung up before the end" is the behaviour
checked, not a duration.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from plugbay.errors import EngineUnavailableError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.kubernetes import KubernetesRunner, sweep
from tests.loopback_http_util import LoopbackServer, read_head
from tests.test_kube_api_timeouts import kubeconfig_for

pytestmark = pytest.mark.kubernetes
SPEC = LaunchSpec(env={}, labels={"plugbay.plugin": "trickle"})
TRICKLE = 160  # bytes; at STEP s each, 40 s: far past the 1 s api_timeout of the tests
STEP = 0.25
BODY_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n"


class TrickleServer(LoopbackServer):
    """Answers each request a byte at a time: the body (``where='body'``) or the head itself (``'head'``)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.requests: list[bytes] = []
        self.hung_up_at: dict[str, int] = {}  # request line -> the byte count at which the client went away
        super().__init__("plugbay-test-trickle")

    def serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                request = read_head(conn)
                if request is None:
                    return
                head, _, body = request.partition(b"\r\n\r\n")
                length = next((int(h.split(b":", 1)[1]) for h in head.split(b"\r\n")
                               if h.lower().startswith(b"content-length:")), 0)
                while len(body) < length:  # the whole request: then an end of file is the client hanging up
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    body += chunk
            except OSError:
                return
            self.requests.append(head)
            line = head.split(b"\r\n", 1)[0].decode()
            if self.where == "body":
                conn.sendall(BODY_HEAD)
                data = b'{"kind": "Pod"' + b" " * TRICKLE
            else:
                data = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * TRICKLE
            for sent in range(TRICKLE):
                if self.stopping.is_set():
                    return
                try:
                    conn.send(data[sent:sent + 1])
                    readable, _, _ = select.select([conn], [], [], STEP)
                    if readable and not conn.recv(1):
                        self.hung_up_at[line] = sent + 1
                        return
                except OSError:
                    self.hung_up_at[line] = sent + 1
                    return


@pytest.fixture(params=["body", "head"])
def trickle(request: pytest.FixtureRequest) -> Iterator[TrickleServer]:
    with TrickleServer(request.param) as server:
        yield server


def ended_early(server: TrickleServer, *calls: str) -> None:
    """Each call (method and path start) reached the server once (no retry after the deadline) and the
    client hung up on it while the server still trickled."""
    for t in list(server.threads):  # each notices a hang-up within STEP; one still trickling fails below
        t.join(timeout=10)
    for call in calls:
        made = [r for r in server.requests if r.decode().startswith(call)]
        assert len(made) == 1, (call, server.requests)
        line = made[0].split(b"\r\n", 1)[0].decode()
        assert server.hung_up_at.get(line, TRICKLE) < TRICKLE, (call, server.hung_up_at)


@pytest.mark.timeout(120)
def test_start_and_kill_end_within_api_timeout_against_a_trickling_server(trickle: TrickleServer,
                                                                        tmp_path: Path) -> None:
    url = trickle.url
    runner = KubernetesRunner("img", kubeconfig=kubeconfig_for(url, tmp_path / "kubeconfig"), start_timeout=5,
                              api_timeout=1)
    with pytest.raises(EngineUnavailableError, match=rf"the Kubernetes API at {url} did not answer create pods"
                                                     r" within 1s .*Pod default/plugbay-.* may exist all the same"):
        runner.start(SPEC)
    with pytest.raises(EngineUnavailableError, match=rf"did not answer delete pods \(default/{runner.pod_name}\)"
                                                     " within 1s.*The pod may still run"):
        runner.kill(0)
    ended_early(trickle, "POST /api/v1/namespaces/default/pods ",
                f"DELETE /api/v1/namespaces/default/pods/{runner.pod_name}")


@pytest.mark.timeout(120)
def test_reattach_ends_within_api_timeout_against_a_trickling_server(trickle: TrickleServer, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    url = trickle.url
    data = {"kind": "KubernetesRunner", "namespace": "default", "pod": "plugbay-x-123456",
            "kubeconfig": kubeconfig_for(url, tmp_path / "kubeconfig")}
    monkeypatch.setenv("KUBECONFIG", data["kubeconfig"])  # a reattach uses this host's own kubeconfig
    with pytest.raises(EngineUnavailableError, match=f"at {url} did not answer get pods within 1s"):
        KubernetesRunner.attach(data, api_timeout=1)
    ended_early(trickle, "GET /api/v1/namespaces/default/pods/plugbay-x-123456 ")


@pytest.mark.timeout(120)
def test_a_given_api_client_with_urllib3_retries_is_bounded_too(trickle: TrickleServer) -> None:
    """The caller's own ApiClient keeps urllib3's retries: a retry after the deadline fails at once."""
    url = trickle.url
    api_client = client.ApiClient(client.Configuration(host=url))
    try:
        with pytest.raises(EngineUnavailableError, match=f"at {url} did not answer list pods within 1s"):
            sweep("default", api_client=api_client, api_timeout=1)
    finally:
        api_client.close()
    ended_early(trickle, "GET /api/v1/namespaces/default/pods?labelSelector")
