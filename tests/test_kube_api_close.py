"""Closing an API client plugbay made closes its connections, and never a call still running on it.

urllib3 2's PoolManager.clear() (what ApiClient.close() calls) drops its pools without closing them,
so their idle connections stayed open until the garbage collector ran. close_client() closes each
pool first; a call in flight on another thread (a start() being killed) finishes, and its connection
is closed when it comes back. A real HTTP server on 127.0.0.1 plays the API server.
"""

from __future__ import annotations

import gc
import http.server
import json
import socketserver
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3.connection
from kubernetes import client

from plugbay.runners.kubernetes import api
from tests.procs import connections_to

pytestmark = pytest.mark.kubernetes


class _Api(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a connection goes back to its pool after each answer

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer(201, {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p", "uid": "u-1"}})

    def log_message(self, *args: Any) -> None:
        pass


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    block_on_close = True


@pytest.fixture
def api_client() -> Iterator[tuple[Any, int]]:
    server = _Server(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, name="plugbay-test-api", daemon=True)
    thread.start()
    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{server.server_address[1]}"
    made = client.ApiClient(cfg)
    try:
        yield made, server.server_address[1]
    finally:
        made.close()
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_idle_connections_are_closed_with_the_client(api_client: tuple[Any, int]) -> None:
    made, port = api_client
    gc.disable()  # what is left open must be closed by close_client, not found later by the collector
    try:
        client.CoreV1Api(made).list_namespaced_pod("default", _request_timeout=5)
        assert connections_to(port) == 1  # back in its pool, idle
        api.close_client(made)
        assert connections_to(port) == 0
    finally:
        gc.enable()


def test_a_call_in_flight_on_another_thread_finishes(api_client: tuple[Any, int],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # start() creating the pod while kill() closes the client: the POST was sent, its answer not yet
    # read; cutting its connection would report a created pod as a failure (and leave it running)
    made, _ = api_client
    sent, closed = threading.Event(), threading.Event()
    answer = urllib3.connection.HTTPConnection.getresponse

    def paused(self: Any) -> Any:
        sent.set()
        closed.wait(10)
        return answer(self)

    monkeypatch.setattr(urllib3.connection.HTTPConnection, "getresponse", paused)
    result: dict[str, object] = {}

    def create() -> None:
        try:
            pod = api.call(made, "default", "create", "pods", client.CoreV1Api(made).create_namespaced_pod,
                           "default", client.V1Pod(metadata=client.V1ObjectMeta(name="p")), _request_timeout=5)
            result["uid"] = pod.metadata.uid
        except Exception as exc:  # noqa: BLE001 - what the test reports
            result["error"] = exc

    creating = threading.Thread(target=create, name="plugbay-test-create")
    creating.start()
    try:
        assert sent.wait(10)
        api.close_client(made)
    finally:
        closed.set()
        creating.join(10)
    assert result == {"uid": "u-1"}, result
