"""A stand-in Docker engine on a unix socket, for failures a real engine shows only by chance.

It answers ``/version`` and ``/_ping`` itself, and every other request as the test's ``answer``
says: a JSON answer ``(status, body)``, :data:`DROP` (the connection breaks mid-request, as at an
engine restart or a proxy's reset), :data:`SILENT` (no response head until the stand-in closes: a
hung engine, or a proxy holding the head back) or :class:`Later` (the head at once, the body
later: a wait request answered at the container's exit). ``requests`` lists what was asked,
``bodies`` what came with it.
The ``standin`` fixture starts one and points DOCKER_HOST at it.
"""

from __future__ import annotations

import json
import re
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

DROP = "drop"
SILENT = "silent"
_SILENT_BOUND = 60.0  # a silent answer ends by itself after this (a test that forgot close())


@dataclass
class Later:
    delay: float
    body: Any
    status: int = 200


Reply = tuple[int, Any] | str | Later
Answer = Callable[[str, str], Reply]  # (method, path without the API version and query) -> reply


class StandinEngine:
    def __init__(self, path: Path, answer: Answer) -> None:
        self.path = str(path)
        self.requests: list[tuple[str, str]] = []
        self.bodies: list[tuple[str, str, bytes]] = []  # (method, path, body) of requests that had one
        self._closing = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's names
                self._answer()

            do_POST = do_DELETE = do_PUT = do_HEAD = do_GET  # noqa: N815

            def _answer(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(size) if size else b""
                path = re.sub(r"^/v[0-9.]+", "", self.path.split("?", 1)[0])
                if body:
                    outer.bodies.append((self.command, path, body))
                if path == "/version":
                    return self._send(200, {"ApiVersion": "1.41", "Version": "20.10.24"})
                if path == "/_ping":
                    return self._send(200, "OK")
                outer.requests.append((self.command, path))
                reply = answer(self.command, path)
                if reply == DROP:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                elif reply == SILENT:
                    outer._closing.wait(_SILENT_BOUND)
                    self.close_connection = True
                elif isinstance(reply, Later):
                    self._send(reply.status, reply.body, later=reply.delay)
                else:
                    assert isinstance(reply, tuple)
                    self._send(*reply)

            def _send(self, status: int, body: Any, later: float = 0.0) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.flush()
                if later and outer._closing.wait(later):
                    self.close_connection = True
                    return
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True
            block_on_close = False

            def get_request(self) -> Any:
                request, _ = super().get_request()
                return request, ("local", 0)  # BaseHTTPRequestHandler wants a (host, port) client address

        self._server = Server(self.path, Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="standin-engine", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Answer], StandinEngine]]:
    """Start a stand-in engine answering as the given function does, as DOCKER_HOST."""
    engines: list[StandinEngine] = []

    def start(answer: Answer) -> StandinEngine:
        engine = StandinEngine(tmp_path / f"engine{len(engines)}.sock", answer)
        engines.append(engine)
        monkeypatch.setenv("DOCKER_HOST", f"unix://{engine.path}")
        return engine

    yield start
    for engine in engines:
        engine.close()
