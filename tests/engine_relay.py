"""A stand-in DOCKER_HOST: a unix socket relaying to the real engine, able to hold one request.

``hold(method, path)`` holds the next request whose request line matches (e.g. the
container create, or its start) before the engine sees it: ``holding`` is set while
it waits, ``release()`` lets it through. ``hold(..., answer=True)`` lets the request
through and holds the engine's answer instead (the engine did the work; the caller
has not heard so). A runner's start() then waits on the engine
at that point for as long as the test wants, the way the Kubernetes stand-in's
hold()/release() hold a pod create. Nothing in the library knows about it.
"""

from __future__ import annotations

import re
import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ENGINE = "/var/run/docker.sock"
_HOLD_BOUND = 60.0  # a held request goes on by itself after this (a test that forgot release())


class EngineRelay:
    """A unix socket that relays to the real engine's socket until closed."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(self.path)
        self._listener.listen(16)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._held: re.Pattern[bytes] | None = None
        self._hold_answer = False
        self._hold_lock = threading.Lock()
        self.holding = threading.Event()
        self.held_line = ""
        self.answered = threading.Event()  # set once the engine answered the held request (its caller gone or not)
        self.answer_line = ""  # that answer's status line
        self._released = threading.Event()
        self._cut = False
        self._acceptor = threading.Thread(target=self._accept, name="plugbay-test-engine-relay")
        self._acceptor.start()

    def hold(self, method: str, path_pattern: str, *, answer: bool = False) -> None:
        """Hold the next request ``method`` on a path (after the API version) matching ``path_pattern``
        (``answer``: pass it on and hold the engine's answer to it)."""
        self._released.clear()
        self.holding.clear()
        self.answered.clear()
        self._hold_answer = answer
        self._held = re.compile(rf"{method} /v[0-9.]+{path_pattern}[? ]".encode())

    def release(self) -> None:
        self._held = None
        self._released.set()

    def cut(self) -> None:
        """Drop the held request's connection instead of passing it on, and take no new ones
        (the engine went away in the middle of that request)."""
        self._cut = True
        self._stop.set()
        self._acceptor.join(5)
        self._listener.close()  # a new connection is refused at once
        self._released.set()

    def drop_connections(self) -> None:
        """Break every open connection (the engine restarted, a proxy timed them out); new ones go on."""
        for s in list(self._socks):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._stop.is_set():
            if not select.select([self._listener], [], [], 0.1)[0]:
                continue
            conn, _ = self._listener.accept()
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(ENGINE)
            self._socks += [conn, upstream]
            t = threading.Thread(target=self._pipe, args=(conn, upstream), name="plugbay-test-engine-pipe")
            self._threads.append(t)
            t.start()

    def _must_hold(self, data: bytes) -> bool:
        with self._hold_lock:
            held = self._held
            if held is None or not held.match(data):
                return False
            self._held = None  # one request only
            self.held_line = data.split(b"\r\n", 1)[0].decode("latin-1")
        return True

    def _pipe(self, conn: socket.socket, upstream: socket.socket) -> None:
        peers = {conn: upstream, upstream: conn}
        answer_held = False  # this connection's next answer is the one to hold
        held_here = False  # this connection's request was the held one: its answer sets answered
        try:
            while not self._stop.is_set():
                for s in select.select(list(peers), [], [], 0.1)[0]:
                    data = s.recv(65536)
                    if not data:
                        if s is conn and held_here and not self.answered.is_set():
                            self._await_answer(upstream)  # the caller gave up: the engine still answers
                        return
                    if s is upstream and held_here and not self.answered.is_set():
                        self._answered(data)
                    if s is conn and self._must_hold(data):
                        held_here = True
                        if self._hold_answer:
                            answer_held = True
                        else:
                            self._wait_release()
                    elif s is upstream and answer_held:
                        answer_held = False
                        self._wait_release()
                    if self._cut:
                        conn.close()
                        return
                    peers[s].sendall(data)
        except OSError:  # the runner closed its side (kill) while a request was held
            return

    def _answered(self, data: bytes) -> None:
        self.answer_line = data.split(b"\r\n", 1)[0].decode("latin-1")
        self.answered.set()

    def _await_answer(self, upstream: socket.socket) -> None:
        """The engine's answer to the held request whose caller closed its connection (bounded)."""
        for _ in range(int(_HOLD_BOUND / 0.1)):
            if self._stop.is_set():
                return
            if select.select([upstream], [], [], 0.1)[0]:
                data = upstream.recv(65536)
                if data:
                    self._answered(data)
                return

    def _wait_release(self) -> None:
        self.holding.set()
        self._released.wait(_HOLD_BOUND)

    def close(self) -> None:
        self.release()
        self._stop.set()
        self._acceptor.join(5)
        for t in self._threads:
            t.join(5)
        for s in self._socks:
            s.close()
        self._listener.close()


@pytest.fixture
def relay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EngineRelay]:
    if not Path(ENGINE).is_socket():
        pytest.skip(f"the engine is not on {ENGINE}")
    gate = EngineRelay(tmp_path / "engine.sock")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{gate.path}")
    try:
        yield gate
    finally:
        gate.close()
