"""A watch answer's line (one event) is bounded: an API server (or a proxy) that sends an endless line
without a newline no longer grows the host's memory for as long as it sends. Both watches: the
EndpointSlice resolver's and the pod runner's PodWatch.

The server is a real socket on 127.0.0.1: it answers a list at once, and each watch with a 200 and
then up to TOTAL bytes of one line, counting whether the client read them all or hung up first. The
line comes in three shapes: in chunks of 1 MiB; as one chunk of TOTAL bytes (the client read a chunk
whole before looking at it); and with neither chunks nor a length, the answer ended by the server's
hang-up (the client read such an answer whole, to its end).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugbay.errors import DiscoveryUnavailableError
from plugbay.network.kubernetes import EndpointSliceResolver
from plugbay.runners.kubernetes.watch import PodWatch
from plugbay.runners.kubernetes.watchlines import MAX_EVENT_BYTES
from tests.loopback_http_util import ListThenWatch
from tests.slice_api import EndpointSets
from tests.test_kube_api_timeouts import given_client, kubeconfig_for
from tests.thread_util import until

pytestmark = pytest.mark.kubernetes
TOTAL = 4 * MAX_EVENT_BYTES
_CHUNK = 1 << 20
SHAPES = ["chunks", "one chunk", "close-delimited"]


class EndlessLine(ListThenWatch):
    """Lists answer an empty list; each watch gets TOTAL bytes of 'x' in ``shape``, and no newline."""

    LIST = json.dumps({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []}).encode()

    def __init__(self, shape: str) -> None:
        self.shape = shape
        self.sent_whole = 0  # watches whose client read all TOTAL bytes
        super().__init__("test-endless-line", conn_timeout=10, join_timeout=15)

    def watch(self, conn: socket.socket) -> None:
        chunked = self.shape != "close-delimited"
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     + (b"Transfer-Encoding: chunked\r\n" if chunked else b"") + b"Connection: close\r\n\r\n")
        if self.shape == "one chunk":
            conn.sendall(b"%x\r\n" % TOTAL)
        piece = b"x" * _CHUNK
        for _ in range(TOTAL // _CHUNK):
            if self.stopping.is_set():
                return
            conn.sendall(b"%x\r\n%s\r\n" % (_CHUNK, piece) if self.shape == "chunks" else piece)
        if chunked:
            conn.sendall(b"\r\n0\r\n\r\n" if self.shape == "one chunk" else b"0\r\n\r\n")
        self.sent_whole += 1


@pytest.fixture(params=SHAPES)
def endless(request: pytest.FixtureRequest) -> Iterator[EndlessLine]:
    with EndlessLine(request.param) as server:
        yield server


@pytest.mark.timeout(60)
def test_the_slice_watch_ends_an_endless_line(endless: EndlessLine, tmp_path: Path) -> None:
    resolver = EndpointSliceResolver("default", "kv", 4000, kubeconfig=kubeconfig_for(endless.url, tmp_path / "kc"))
    resolver.start(EndpointSets())
    try:
        assert until(lambda: endless.hung_up + endless.sent_whole >= 1, 30)
        assert until(lambda: "without a newline" in str(resolver.last_error), 10), resolver.last_error
        assert endless.sent_whole == 0, "the watch read the whole endless line"
        # said as a broken connection is: the target once, no runner's error type
        assert isinstance(resolver.last_error, DiscoveryUnavailableError), repr(resolver.last_error)
        assert str(resolver.last_error).startswith(
            f"the endpointslices watch for kubernetes:///default/kv:4000: the Kubernetes API sent more than"
            f" {MAX_EVENT_BYTES} bytes without a newline"), resolver.last_error
        assert str(resolver.last_error).count("kubernetes:///") == 1, resolver.last_error
    finally:
        resolver.close()


@pytest.mark.timeout(60)
def test_the_pod_watch_ends_an_endless_line(endless: EndlessLine) -> None:
    from kubernetes import client

    api_client = given_client(endless.url)
    running: dict[str, Any] = {"metadata": {"name": "p1", "uid": "uid-1"}, "status": {"phase": "Running"}}
    watch = PodWatch(client.CoreV1Api(api_client), "ns", lambda: dict(running), api_timeout=5)
    watch.uid = "uid-1"
    watch.start("p1")
    try:
        assert until(lambda: endless.hung_up + endless.sent_whole >= 1, 30)
        assert until(lambda: "without a newline" in watch.last_failure, 10), watch.last_failure
        assert endless.sent_whole == 0, "the watch read the whole endless line"
        said = f"the watch of pod ns/p1: the Kubernetes API sent more than {MAX_EVENT_BYTES} bytes without a newline"
        assert said in watch.last_failure
    finally:
        watch.close()
        api_client.close()
