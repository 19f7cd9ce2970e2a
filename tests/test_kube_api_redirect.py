"""The pod runner's bounded API calls when the API server redirects, or the user's Retry backs off.

plugbay makes a bounded call's connection retries itself (deadline.py: urllib3 warned of each). A
redirect that urllib3 follows to another pool passed its retries by name and skipped that loop, so a
failed connection there escaped as plugbay's private retry signal instead of EngineUnavailableError.
And the retries' backoff ignored the call's bound: a user's Retry(10, backoff_factor=10) held a 2 s call
20 s. Real HTTP servers on loopback stand in for the API server; a closed port for the far side.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("kubernetes")

from kubernetes import client  # noqa: E402
from urllib3.util.retry import Retry  # noqa: E402

from plugbay.errors import EngineUnavailableError  # noqa: E402
from plugbay.runners.kubernetes import api  # noqa: E402

pytestmark = pytest.mark.kubernetes


class _Server:
    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self.requests = 0
        owner = self

        class Counted(handler):  # type: ignore[valid-type, misc]
            def handle_one_request(self) -> None:
                owner.requests += 1
                super().handle_one_request()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Counted)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def redirecting(closed_port: int) -> Iterator[_Server]:
    dead = closed_port

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(307)
            self.send_header("Location", f"http://127.0.0.1:{dead}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = _Server(Redirect)
    yield server
    server.close()


@pytest.fixture
def hanging_up() -> Iterator[_Server]:
    class HangUp(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

    server = _Server(HangUp)
    yield server
    server.close()


def _read_pod(url: str, retries: Retry | None = None, bound: float = 5) -> None:
    cfg = client.Configuration()
    cfg.host = url
    if retries is not None:
        cfg.retries = retries
    api_client = client.ApiClient(cfg)
    try:
        api.call(api_client, "default", "get", "pods", client.CoreV1Api(api_client).read_namespaced_pod, "p",
                 "default", _request_timeout=bound)
    finally:
        api_client.close()


def test_a_redirect_to_a_place_that_refuses_is_engine_unavailable(redirecting: _Server) -> None:
    with pytest.raises(EngineUnavailableError, match="cannot reach the Kubernetes API"):
        _read_pod(redirecting.url)
    assert redirecting.requests >= 1


def test_a_users_retry_backoff_ends_with_the_calls_bound(hanging_up: _Server) -> None:
    begun = time.monotonic()
    with pytest.raises(EngineUnavailableError):
        _read_pod(hanging_up.url, Retry(10, backoff_factor=10), bound=2)
    assert time.monotonic() - begun < 10  # the bound (2 s), not the backoff's 20 s and more
    assert hanging_up.requests >= 2  # it was retried, as the user's Retry says, within the bound
