"""plugbay.images.docker_client() against an engine gone since this process asked its API version (the
version is asked once per engine and process): the ping's failure is an EngineUnavailableError, and
the client it made is closed, not left to the garbage collector."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from plugbay.errors import EngineUnavailableError
from plugbay.images import docker_client
from plugbay.runners.docker import connect


@pytest.fixture
def closes(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The docker clients closed meanwhile (each close still made)."""
    closed: list[Any] = []
    close = docker.DockerClient.close

    def counted(self: Any) -> None:
        closed.append(self)
        close(self)

    monkeypatch.setattr(docker.DockerClient, "close", counted)
    return closed


def _known(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.setenv("DOCKER_HOST", host)
    monkeypatch.setattr(connect, "_versions", {host: "1.41"})  # as after an earlier client of this process


def test_an_engine_gone_since_its_version_was_known_is_an_engine_unavailable_error(
        monkeypatch: pytest.MonkeyPatch, closes: list[Any], closed_port: int) -> None:
    port = closed_port  # nothing listens on it
    _known(monkeypatch, f"tcp://127.0.0.1:{port}")
    with pytest.raises(EngineUnavailableError, match=f"cannot reach the Docker engine at tcp://127.0.0.1:{port}"):
        docker_client()
    assert len(closes) == 1


@pytest.fixture
def dropping(tmp_path: Path) -> Iterator[str]:
    """A unix socket whose server reads each request and closes the connection unanswered."""
    path = str(tmp_path / "drops.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(5)


def test_an_engine_that_drops_the_ping_is_an_engine_unavailable_error(
        monkeypatch: pytest.MonkeyPatch, closes: list[Any], dropping: str) -> None:
    _known(monkeypatch, f"unix://{dropping}")
    with pytest.raises(EngineUnavailableError, match=f"Docker engine at unix://{dropping}"):
        docker_client()
    assert len(closes) == 1
