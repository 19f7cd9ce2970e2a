"""After a peer's GoAway, the host's new streams go to a new session; the live ones finish on the old.

hashicorp/yamux's Session.GoAway() (a server draining before it stops) keeps the
connection: the peer only takes no new stream on it. The host kept that session as
its only one, so every new stream (a gRPC reconnect of the main channel, a
brokered dial) failed with NoNewStreamsError until the peer finally closed the
connection; the main channel's reconnect was a connection closed at once (gRPC:
UNAVAILABLE). Now the next open dials a new session when the current one went away.
The peer is tests/go/yamux_drain (hashicorp/yamux itself).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from plugbay.core.transport.keepalive import Keepalive
from plugbay.core.transport.muxhost import HostMux
from plugbay.core.transport.yamux import Session, Stream
from tests.gobuild import go_program_or_skip

BLOCK = bytes(range(250)) * 4  # the 1000 bytes yamux_drain echoes before its GoAway


def _echoed(stream: Stream, data: bytes) -> bytes:
    stream.write(data)
    got = b""
    deadline = time.monotonic() + 10
    while len(got) < len(data) and time.monotonic() < deadline:
        got += bytes(stream.read(len(data) - len(got)))
    return got


def test_new_streams_after_a_goaway_ride_a_new_session_and_the_old_ones_finish(tmp_path: Path) -> None:
    binary = go_program_or_skip("yamux_drain")
    address = str(tmp_path / "drain.sock")
    peer = subprocess.Popen([str(binary), address], stdout=subprocess.PIPE, text=True)
    host = None
    try:
        assert peer.stdout is not None and peer.stdout.readline().strip() == "listening"
        host = HostMux("unix", address)
        first = host.session
        old = host.open_stream()
        assert _echoed(old, BLOCK) == BLOCK  # the peer sends its GoAway after this echo
        deadline = time.monotonic() + 10
        while first is not None and not first.went_away:
            assert time.monotonic() < deadline, "no GoAway came"
            time.sleep(0.01)
        new = host.open_stream()  # was: NoNewStreamsError, until the peer closed the connection
        assert host.session is not first and not first.closed
        assert _echoed(new, b"new work") == b"new work"
        assert _echoed(old, b"still here") == b"still here"  # the live stream finishes on the old session
        with socket.socket(socket.AF_UNIX) as main:  # what the main gRPC channel's reconnect does
            main.settimeout(10)
            main.connect(host.local_address[1])
            main.sendall(b"reconnect")
            assert main.recv(100) == b"reconnect"  # was: the connection closed at once (EOF)
        old.close_write()
    finally:
        if host is not None:
            host.close()
        peer.kill()
        peer.wait(10)
        if peer.stdout is not None:
            peer.stdout.close()


@contextmanager
def _drain_peer(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    binary = go_program_or_skip("yamux_drain")
    address = str(tmp_path / "drain.sock")
    peer = subprocess.Popen([str(binary), address], stdout=subprocess.PIPE, text=True)
    try:
        assert peer.stdout is not None and peer.stdout.readline().strip() == "listening"
        yield peer, address
    finally:
        os.kill(peer.pid, signal.SIGCONT)
        peer.kill()
        peer.wait(10)
        if peer.stdout is not None:
            peer.stdout.close()


def _went_away(host: HostMux) -> tuple[Session, Stream]:
    """The first session, once the peer sent its GoAway on it, and the live stream it carries."""
    first = host.session
    assert first is not None
    old = host.open_stream()
    assert _echoed(old, BLOCK) == BLOCK
    deadline = time.monotonic() + 10
    while not first.went_away:
        assert time.monotonic() < deadline, "no GoAway came"
        time.sleep(0.01)
    return first, old


def test_a_draining_session_is_still_keepalive_checked(tmp_path: Path) -> None:
    # its live stream is in practice the main channel's connection: a peer gone silent must end it
    with _drain_peer(tmp_path) as (peer, address):
        host = HostMux("unix", address, keepalive=Keepalive(0.5, 1.0))
        try:
            first, old = _went_away(host)
            host.open_stream()  # the redial: ``first`` now drains, ``old`` still open on it
            second = host.session
            assert second is not first and not first.closed and first.open_streams
            os.kill(peer.pid, signal.SIGSTOP)  # silent, its connections open (a frozen host, a partition)
            deadline = time.monotonic() + 8
            while not (first.closed and second is not None and second.closed):
                assert time.monotonic() < deadline, (
                    f"draining session closed: {first.closed}, current one: {second is not None and second.closed}")
                time.sleep(0.05)
            assert "keepalive" in (first.close_reason or "")
        finally:
            host.close()


def test_close_during_a_goaway_redial_closes_the_old_session(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with _drain_peer(tmp_path) as (_, address):
        host = HostMux("unix", address)
        first, _old = _went_away(host)
        attached, go_on = threading.Event(), threading.Event()
        real_attach = HostMux._attach

        def paused_attach(self: HostMux, session: Session) -> None:
            real_attach(self, session)
            if threading.current_thread().name == "redialer":  # close() lands between attach and parking
                attached.set()
                go_on.wait(10)

        monkeypatch.setattr(HostMux, "_attach", paused_attach)
        redialer = threading.Thread(target=lambda: _open_quietly(host), name="redialer")
        redialer.start()
        try:
            assert attached.wait(10)
            host.close()
        finally:
            go_on.set()
            redialer.join(10)
        try:
            deadline = time.monotonic() + 5
            while not first.closed:
                assert time.monotonic() < deadline, "close() left the went-away session open"
                time.sleep(0.02)
            assert not host._draining
        finally:
            first.abort("test cleanup")


def _open_quietly(host: HostMux) -> None:
    try:
        host.open_stream()
    except Exception:  # closed under it: whatever it raises, the point is the old session
        pass
