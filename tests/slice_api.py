"""A loopback HTTP stand-in for the one Kubernetes API the EndpointSlice resolver uses.

GET /apis/discovery.k8s.io/v1/namespaces/NS/endpointslices answers ``list_body``
(or ``list_status`` with a Status body, or holds the request unanswered while
``hang_lists`` is set); with watch=true it
streams the events the test puts in ``events`` (None ends the stream; an ERROR event ends it too, after
it is sent, as the API server's does). A watch takes no event once it is over (the client hung up): an
event put after one watch's end is the next watch's. Every request is counted per kind. Real sockets on
127.0.0.1; nothing else is served.
"""

from __future__ import annotations

import json
import queue
import select
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest


def slice_of(name: str, addresses: list[str], port: int = 4000, service: str = "kv") -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}, "resourceVersion": "1"},
            "addressType": "IPv4", "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses]}


class SliceAPI:
    def __init__(self) -> None:
        self.list_body: Any = {"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
                               "metadata": {"resourceVersion": "1"}, "items": []}
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.hang_lists = threading.Event()
        self.list_status = 200
        self.lists = 0
        self.watches = 0
        self._closing = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if "watch=true" in self.path:
                    api.watches += 1
                    self._watch()
                    return
                api.lists += 1
                while api.hang_lists.is_set() and not api._closing.is_set():
                    api._closing.wait(0.05)
                if api._closing.is_set():
                    self.close_connection = True  # hang up: the client's read ends now
                    return
                body = api.list_body if isinstance(api.list_body, bytes) else json.dumps(api.list_body).encode()
                if api.list_status != 200:  # a Status, as the API server words a refusal
                    body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                       "code": api.list_status, "message": f"endpointslices.discovery.k8s.io"
                                       f" is refused here ({api.list_status})"}).encode()
                self.send_response(api.list_status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _watch(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                while not api._closing.is_set() and not self._hung_up():
                    try:
                        event = api.events.get(timeout=0.05)
                    except queue.Empty:
                        continue
                    if self._hung_up():  # the client left while this get waited: the event is the next watch's
                        with api.events.mutex:  # at the front, where it was (get left unfinished_tasks as it was)
                            api.events.queue.appendleft(event)
                            api.events.not_empty.notify()
                        break
                    if event is None:
                        break
                    line = json.dumps(event).encode() + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                    if event.get("type") == "ERROR":  # the client ends its watch on it: so does the server
                        break
                self.wfile.write(b"0\r\n\r\n")
                self.close_connection = True

            def _hung_up(self) -> bool:
                """Whether the client closed the connection (its watch is over, whatever the reason)."""
                if not select.select([self.connection], [], [], 0)[0]:
                    return False
                try:
                    return self.connection.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    return True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="test-slice-api")
        self._thread.start()

    def kubeconfig(self, path: Path) -> str:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "c", "cluster": {"server": self.url}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "default"}}]}))
        return str(path)

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)


@pytest.fixture()
def api() -> Iterator[SliceAPI]:
    """A SliceAPI for one test (import it: ``from tests.slice_api import api``)."""
    server = SliceAPI()
    try:
        yield server
    finally:
        server.close()


class EndpointSets:
    """A resolver's on_change: every endpoint set it reports, in order (read ``sets``)."""

    def __init__(self) -> None:
        self.sets: list[list[Any]] = []
        self._lock = threading.Lock()

    def __call__(self, endpoints: Iterable[Any]) -> None:
        with self._lock:
            self.sets.append(list(endpoints))

