"""A stand-in Docker engine on a unix socket that records what it is asked.

It knows the images in ``images`` (any other is the engine's 404 "No such image"),
records every request (``requests``) and the body of each container create
(``creates``), accepts the create and refuses the start, so a PluginContainer's
start() ends right after the create the test looks at. Nothing leaves this
machine, and no real container is made.
"""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
from collections.abc import Iterable
from typing import Any

CONTAINER_ID = "c" * 64


class StandinEngine:
    def __init__(self, path: str, images: Iterable[str] = (), *, running_in: str | None = None) -> None:
        """``running_in``: the network the container of id "deadbeef" (the tests' own, when a test
        pretends to run inside a container) is on."""
        self.path = path
        self.requests: list[tuple[str, str]] = []
        self.creates: list[dict[str, Any]] = []
        known = set(images)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, body: Any, code: int = 200) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                outer.requests.append(("GET", self.path))
                path = self.path.split("?")[0]
                if path.endswith("/version"):
                    return self._send({"ApiVersion": "1.41", "Version": "20.10.24"})
                if path.endswith("/containers/json"):
                    return self._send([{"Id": "deadbeef", "HostConfig": {"NetworkMode": running_in or "default"}}])
                if "/images/" in path:
                    name = path.split("/images/", 1)[1].rsplit("/json", 1)[0]
                    if name in known:
                        return self._send({"Id": "sha256:" + "1" * 64, "RepoTags": [name], "Config": {}})
                    return self._send({"message": f"No such image: {name}"}, 404)
                if "/containers/" in path:
                    return self._send({"Id": CONTAINER_ID, "Name": "/standin", "State": {"Status": "created"},
                                       "Config": {"Labels": {}}})
                return self._send({"message": "not found"}, 404)

            def do_POST(self) -> None:
                outer.requests.append(("POST", self.path))
                size = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(size) if size else b""
                path = self.path.split("?")[0]
                if path.endswith("/containers/create"):
                    outer.creates.append(json.loads(body))
                    return self._send({"Id": CONTAINER_ID, "Warnings": []}, 201)
                if "/images/create" in path:  # a pull: nothing here has a registry
                    return self._send({"message": "pull access denied (stand-in engine: no registry)"}, 404)
                return self._send({"message": "stand-in engine: refusing to start"}, 500)

            def do_DELETE(self) -> None:
                outer.requests.append(("DELETE", self.path))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

            def get_request(self) -> Any:
                request, _ = super().get_request()
                return request, ("local", 0)  # BaseHTTPRequestHandler wants a (host, port) client address

        self.server = Server(path, Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def pulls(self) -> list[str]:
        return [path for method, path in self.requests if method == "POST" and "/images/create" in path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
