"""A yamux stream's two timeouts, as hashicorp/yamux's. A stream this side closed whose peer never
closes its own: reset after the session's stream_close_timeout (StreamCloseTimeout), so a stuck or
hostile peer cannot hold the stream, its bridge's local socket and copy thread, and its place under
the stream cap for good. A stream this side opened that the peer never acknowledges (a peer that
reads but accepts nothing): the session is dropped after stream_open_timeout (StreamOpenTimeout)."""

from __future__ import annotations

import math
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from plugbay.core.transport.bridges import bridge
from plugbay.core.transport.workers import Workers
from plugbay.core.transport.yamux import DATA, FIN, RST, SYN, WINDOW_UPDATE, Session, Stream, StreamClosed
from tests.yamux_util import go_peer, raw_peer_session, read_exactly

_HDR = struct.Struct(">BBHII")
_SHORT = 0.5  # the tests' stream_close_timeout (hashicorp/yamux's: 5 min)


def _answer_and_close(stream: Stream) -> None:
    def run() -> None:
        try:
            stream.write(read_exactly(stream, 5))
            stream.close_write()
        except StreamClosed:
            pass

    threading.Thread(target=run, name="plugbay-test-answer", daemon=True).start()


@pytest.mark.go
def test_a_stream_a_go_peer_leaves_half_closed_is_reset_and_the_session_lives_on() -> None:
    with go_peer("yamux_halfclose") as (proc, conn):
        session = Session(conn, client=False, on_stream=_answer_and_close, name="t-halfclose", start=False)
        try:
            session.stream_close_timeout = _SHORT
            session.start()
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()  # hashicorp/yamux saw the reset and dropped the stream
            assert line == "reset", line + proc.stdout.read()
            assert not session.closed, session.close_reason
            assert session.open_streams == 0
            session.close()
            out, _ = proc.communicate(timeout=30)
            assert proc.returncode == 0, out
        finally:
            session.close()


@pytest.mark.go
def test_a_go_peer_that_acknowledges_no_stream_is_dropped_and_its_streams_end() -> None:
    with go_peer("yamux_noaccept") as (proc, conn):
        session = Session(conn, client=True, on_stream=lambda s: s.reset(), name="t-noaccept", start=False)
        try:
            session.stream_open_timeout = _SHORT
            session.start()
            stream = session.open()
            stream.write(b"hello")  # within the window: sent, never acknowledged
            out, _ = proc.communicate(timeout=60)  # the Go side sees its session closed
            assert out.strip() == "closed", out
            assert session.closed
            assert "did not acknowledge stream 1" in session.close_reason, session.close_reason
            with pytest.raises(StreamClosed):
                stream.write(b"more")
        finally:
            session.close()


def _frame(peer: socket.socket) -> tuple[int, int, int, int, bytes]:
    """The next frame the session sends the raw peer: (type, flags, stream id, length, payload)."""
    header = bytearray()
    while len(header) < _HDR.size:
        got = peer.recv(_HDR.size - len(header))
        assert got, "the session closed the connection"
        header += got
    _, kind, flags, sid, length = _HDR.unpack(header)
    payload = bytearray()
    while kind == DATA and len(payload) < length:
        got = peer.recv(length - len(payload))
        assert got, "the session closed the connection inside a payload"
        payload += got
    return kind, flags, sid, length, bytes(payload)


def test_a_bridge_whose_local_side_ended_frees_its_socket_once_the_peer_never_closes() -> None:
    local_app, conn = socket.socketpair()  # local_app: the local gRPC side
    mine, peer = socket.socketpair()
    workers = Workers("plugbay-test-copy")
    ended = threading.Event()
    session = Session(mine, client=False, on_stream=lambda stream: bridge(stream, conn, workers, ended.set),
                      name="t-halfclose-bridge", start=False)
    session.stream_close_timeout = _SHORT
    session.start()
    try:
        peer.settimeout(30)  # a hang guard
        local_app.settimeout(30)
        peer.sendall(_HDR.pack(0, DATA, SYN, 1, 7) + b"request")
        assert local_app.recv(100) == b"request"
        local_app.sendall(b"answer")
        local_app.shutdown(socket.SHUT_WR)  # the local side is done: the bridge sends its FIN
        seen = []
        while True:
            try:
                kind, flags, sid, _, payload = _frame(peer)
            except TimeoutError:
                pytest.fail(f"after {seen!r}, the stream the peer left half-closed was never reset")
            assert sid == 1
            seen.append((kind, flags & (FIN | RST), payload))
            if flags & RST:
                break
        # the answer and the FIN, and then, the peer never closing its side, the reset
        assert b"".join(p for _, _, p in seen) == b"answer"
        assert any(kind == WINDOW_UPDATE and flags == FIN for kind, flags, _ in seen), seen
        assert seen[-1][:2] == (WINDOW_UPDATE, RST), seen
        # the bridge let go of the local socket, its copy loops ended, the session forgot the stream
        assert ended.wait(30), "the bridge still holds the local socket"
        assert local_app.recv(100) == b""
        assert session.open_streams == 0
        assert not session.closed, session.close_reason
    finally:
        local_app.close()
        peer.close()
        session.close()
        workers.close()


def _dropped_or_reset(raw: socket.socket, sid: int) -> str:
    """Read the session's frames to the raw peer until stream ``sid``'s RST ("reset") or the end of the
    connection ("dropped")."""
    while True:
        try:
            kind, flags, got, _, _ = _frame(raw)
        except AssertionError:
            return "dropped"
        if got == sid and flags & RST:
            return "reset"


@pytest.fixture()
def unacknowledging() -> Iterator[tuple[Session, socket.socket]]:
    """A session whose raw peer acknowledges no stream (its accept loop stuck), with short timeouts: a stream's
    open timeout (1 s) ends before its close timeout (2 s), so the close timeout's RST comes after the
    open timeout, had it been armed, dropped the session."""
    with raw_peer_session("t-noack", 30) as (session, raw):
        session.stream_open_timeout, session.stream_close_timeout = 1.0, 2.0
        yield session, raw


def test_a_stream_closed_here_before_its_ack_no_longer_waits_for_it(
        unacknowledging: tuple[Session, socket.socket]) -> None:
    # as hashicorp/yamux's Close: closing the stream ends the wait for its ACK
    session, raw = unacknowledging
    stream = session.open()
    stream.close_write()
    assert _dropped_or_reset(raw, stream.id) == "reset", session.close_reason
    assert not session.closed, session.close_reason


def test_a_stream_the_peer_closed_before_its_ack_no_longer_waits_for_it(
        unacknowledging: tuple[Session, socket.socket]) -> None:
    # as hashicorp/yamux: a FIN from the peer ends the wait for its ACK (it had the stream)
    session, raw = unacknowledging
    stream = session.open()
    raw.sendall(_HDR.pack(0, WINDOW_UPDATE, FIN, stream.id, 0))
    assert stream.read() == b""  # the FIN arrived
    session.stream_open_timeout = math.inf  # the next stream waits for no ACK: only its close timeout runs
    other = session.open()
    other.close_write()
    assert _dropped_or_reset(raw, other.id) == "reset", session.close_reason
    assert not session.closed, session.close_reason
    stream.close_write()  # closed both ways, never acknowledged: forgotten, its timeouts with it
    assert session._streams == {}
