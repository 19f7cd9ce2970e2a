"""What a yamux session refuses to open, and what it keeps: a peer's normal GoAway (hashicorp/yamux's
remoteGoAway) stops new streams only; an error GoAway ends the session; running out of stream ids
(hashicorp/yamux's ErrStreamsExhausted) refuses new streams without touching the session."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from plugbay.core.transport.yamux import FIN, GO_AWAY, SYN, WINDOW_UPDATE, Session, Stream, StreamClosed
from plugbay.errors import BrokerClosedError, NoNewStreamsError
from tests.yamux_util import ended_by, go_peer, read_exactly

_HDR = struct.Struct(">BBHII")


def _echo(stream: Stream) -> None:
    def run() -> None:
        try:
            while data := stream.read():
                stream.consumed(len(data))
                stream.write(data)
            stream.close_write()
        except StreamClosed:
            pass

    threading.Thread(target=run, name="plugbay-test-echo", daemon=True).start()


@pytest.mark.go
def test_a_go_peers_goaway_keeps_its_open_streams_and_refuses_new_ones() -> None:
    with go_peer("yamux_goaway") as (proc, conn):
        session = Session(conn, client=False, on_stream=_echo, name="t-goaway")
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()  # the Go side's stream echoed after its GoAway
            assert line == "ok", line + proc.stdout.read()
            assert not session.closed, session.close_reason
            with pytest.raises(NoNewStreamsError, match="GoAway"):
                session.open()
            assert not session.closed
            session.close()
            out, _ = proc.communicate(timeout=30)
            assert proc.returncode == 0, out
        finally:
            session.close()


def test_a_goaway_with_an_error_code_still_ends_the_session() -> None:
    assert "code 1" in ended_by(_HDR.pack(0, GO_AWAY, 0, 0, 1), name="t-goaway-err")  # a protocol error


def test_after_a_normal_goaway_the_peer_may_still_open_and_finish_streams() -> None:
    a, b = socket.socketpair()
    got: list[Stream] = []
    arrived = threading.Event()
    session = Session(a, client=True, on_stream=lambda s: (got.append(s), arrived.set()), name="t-goaway-in")
    try:
        b.sendall(_HDR.pack(0, GO_AWAY, 0, 0, 0))
        b.sendall(_HDR.pack(0, WINDOW_UPDATE, SYN, 2, 0) + _HDR.pack(0, 0, FIN, 2, 3) + b"abc")
        assert arrived.wait(10)
        assert read_exactly(got[0], 3) == b"abc"
        with pytest.raises(NoNewStreamsError):
            session.open()
        assert not session.closed
    finally:
        session.close()
        b.close()


@pytest.mark.parametrize("client", [True, False])
def test_stream_ids_running_out_refuse_new_streams_and_keep_the_session(client: bool) -> None:
    a, b = socket.socketpair()
    peer = Session(b, client=not client, on_stream=_echo, name="t-ids-peer")
    session = Session(a, client=client, on_stream=_echo, name="t-ids")
    try:
        last = 0xFFFFFFFD if client else 0xFFFFFFFC  # hashicorp/yamux's last ids (below MaxUint32-1)
        session._next = last
        stream = session.open()
        assert stream.id == last
        with pytest.raises(NoNewStreamsError, match="stream ids") as refused:
            session.open()
        assert isinstance(refused.value, BrokerClosedError)  # what a dial reports when no stream can be had
        with session._lock:
            assert sorted(session._streams) == [last]  # the refused open left nothing behind
        stream.write(b"still works")
        stream.close_write()
        assert read_exactly(stream, 11) == b"still works"
        assert not session.closed
    finally:
        session.close()
        peer.close()

