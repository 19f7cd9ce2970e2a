"""Small helpers of the yamux tests: reading a stream to a length, a session fed raw frames, a Go peer
(tests/go/PROGRAM, hashicorp/yamux) dialed in over a unix socket."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from plugbay.core.transport.yamux import Session, Stream


def read_exactly(s: Stream, n: int) -> bytes:
    """Up to ``n`` bytes of ``s`` (fewer once it ends), each read given back to the window."""
    out = bytearray()
    while len(out) < n:
        data = s.read()
        if not data:
            break
        out += data
        s.consumed(len(data))
    return bytes(out)


def ended_by(*frames: bytes, name: str) -> str:
    """Why a server session fed ``frames`` by its peer ended (it must end within 10 s)."""
    a, b = socket.socketpair()
    session = Session(a, client=False, on_stream=lambda s: s.reset(), name=name)
    try:
        for frame in frames:
            b.sendall(frame)
        session._reader.join(10)
        assert session.closed, f"the session lives on after {frames!r}"
        return session.close_reason
    finally:
        session.close()
        b.close()


@contextmanager
def raw_peer_session(name: str, timeout: float) -> Iterator[tuple[Session, socket.socket]]:
    """A client session on one end of a socket pair, which resets any stream the peer opens, and the raw peer
    on the other end (reads bounded by ``timeout`` seconds, a hang guard); both closed at the end."""
    a, raw = socket.socketpair()
    session = Session(a, client=True, on_stream=lambda s: s.reset(), name=name)
    raw.settimeout(timeout)
    try:
        yield session, raw
    finally:
        session.close()
        raw.close()


@contextmanager
def go_peer(program: str) -> Iterator[tuple[subprocess.Popen[str], socket.socket]]:
    """The Go ``program`` (run as ``program ADDRESS``) started against a unix listener: (its process, with
    stdout and stderr as one text pipe; the connection it dialed). Skips when Go is missing. At the end the
    process is killed if it still runs and reaped, and the connection closed (close the session on it first)."""
    from tests.gobuild import build_go, go_missing_reason

    if go_missing_reason():
        pytest.skip(str(go_missing_reason()))
    peer = build_go(program)
    d = tempfile.mkdtemp(prefix="yt", dir="/tmp")  # a short path: unix socket names are limited
    path = os.path.join(d, "y.sock")
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(path)
        listener.listen(1)
        proc = subprocess.Popen([str(peer), path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            listener.settimeout(30)
            conn, _ = listener.accept()
            conn.settimeout(None)
            try:
                yield proc, conn
            finally:
                conn.close()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
    finally:
        listener.close()
        os.unlink(path)
        os.rmdir(d)
