"""Raw HTTP servers on 127.0.0.1 for the Kubernetes client tests: each connection is answered byte by byte by
the test's own code (a trickle, an endless line), which no ready-made HTTP server would let it send."""

from __future__ import annotations

import socket
import threading
from typing import Self


class LoopbackServer:
    """Accepts on 127.0.0.1 and gives each connection to ``serve`` in a thread of its own; close() stops
    accepting, sets ``stopping`` (which serve() watches, to end what it still sends) and joins every thread."""

    def __init__(self, name: str, join_timeout: float = 10) -> None:
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self._name = name
        self._join_timeout = join_timeout
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._accepting = threading.Thread(target=self._accept, name=f"{name}-accept")
        self._accepting.start()

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            t = threading.Thread(target=self.serve, args=(conn,), name=self._name)
            self.threads.append(t)
            t.start()

    def close(self) -> None:
        self.stopping.set()
        self._accepting.join(timeout=10)
        for t in self.threads:
            t.join(timeout=self._join_timeout)
        self._listener.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_head(conn: socket.socket) -> bytes | None:
    """A request's bytes up to and including its blank line (and whatever came with them), or None if the
    client hung up first."""
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        request += chunk
    return request


class ListThenWatch(LoopbackServer):
    """Answers a list request with ``LIST`` at once and gives a watch request (``watch=true``) to ``watch``,
    counting the watches, and those whose client hung up (``hung_up``) before watch() was done."""

    LIST = b""

    def __init__(self, name: str, conn_timeout: float, join_timeout: float = 10) -> None:
        self.watches = 0
        self.hung_up = 0
        self._conn_timeout = conn_timeout
        super().__init__(name, join_timeout)

    def watch(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(self._conn_timeout)
            try:
                request = read_head(conn)
                if request is None:
                    return
                if b"watch=true" not in request.split(b"\r\n", 1)[0]:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                                 b"Connection: close\r\n\r\n%s" % (len(self.LIST), self.LIST))
                    return
                self.watches += 1
                self.watch(conn)
            except OSError:
                self.hung_up += 1
