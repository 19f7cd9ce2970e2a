"""A loopback HTTP stand-in for the few pod API calls a test drives by hand: read, watch, list, delete.

Each answer is what the test sets, shaped or not as the schema says: the runner's pod watch and
sweep() must take the API server's answers as input. ``watch_events(name)`` gives the events one
watch streams before it ends (at once, well before its timeoutSeconds); every request is counted per
kind. Real sockets on 127.0.0.1; nothing else is served.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Json = dict[str, Any]


def pod(name: str, uid: str = "uid-1", phase: str = "Running", labels: dict[str, str] | None = None,
        namespace: str = "ns") -> Json:
    return {"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "resourceVersion": "5",
                         "labels": labels or {}},
            "spec": {"containers": [{"name": "plugin", "image": "x"}]},
            "status": {"phase": phase, "containerStatuses": [
                {"name": "plugin", "ready": True, "restartCount": 0, "image": "x", "imageID": "",
                 "state": {"running": {}}}]}}


def _status(code: int, reason: str, name: str = "") -> Json:
    """The API server's Status; a NotFound names the pod as the API server's does (details)."""
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
            "message": f'pods "{name}" not found' if name else reason,
            **({"details": {"name": name, "kind": "pods"}} if name else {})}


class PodAPI:
    def __init__(self) -> None:
        self.pods: dict[str, Json] = {}
        self.watch_events: Callable[[str], list[Json]] = lambda name: []
        self.list_items: list[Any] | None = None  # what a list answers; None: the pods
        self.counts = {"watch": 0, "get": 0, "delete": 0, "list": 0}
        self.deletes: list[str] = []
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, obj: Any) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _count(self, kind: str) -> None:
                with api._lock:
                    api.counts[kind] += 1

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path, _, query = self.path.partition("?")
                parts = path.strip("/").split("/")  # api v1 namespaces NS pods [NAME]
                if "watch=true" in query:
                    self._count("watch")
                    name = query.split("metadata.name%3D")[-1].split("&")[0] if "metadata.name" in query else ""
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for event in api.watch_events(name):
                        line = json.dumps(event).encode() + b"\n"
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.write(b"0\r\n\r\n")
                    self.close_connection = True
                    return
                if len(parts) == 6:
                    self._count("get")
                    found = api.pods.get(parts[5])
                    self._send(200, found) if found is not None else self._send(404, _status(404, "NotFound", parts[5]))
                    return
                self._count("list")
                items = api.list_items if api.list_items is not None else list(api.pods.values())
                self._send(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "9"},
                                 "items": items})

            def do_DELETE(self) -> None:  # noqa: N802
                parts = self.path.partition("?")[0].strip("/").split("/")
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self._count("delete")
                api.deletes.append(parts[5])
                gone = api.pods.pop(parts[5], None)
                self._send(200, gone) if gone is not None else self._send(404, _status(404, "NotFound", parts[5]))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="test-pod-api")
        self._thread.start()

    def client(self) -> Any:
        from kubernetes import client

        cfg: Any = type.__call__(client.Configuration)
        cfg.host = self.url
        return client.ApiClient(cfg)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)
