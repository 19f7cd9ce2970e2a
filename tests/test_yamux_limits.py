"""What a yamux peer can make a Session hold: reset streams, unanswered pings, open streams.

A raw peer (a socketpair end the test writes hashicorp/yamux frames to) against a
real Session; whatever the peer sends, the Session's memory and streams stay bounded.
"""

from __future__ import annotations

import socket
import struct
import threading
import tracemalloc
from collections.abc import Iterator

import pytest

from tests.netflood import split_frames
from tests.resilience_util import wait_until
from tests.yamux_util import read_exactly

from plugbay.core.transport.yamux import (
    ACK,
    DATA,
    MAX_STREAMS,
    PING,
    RST,
    SYN,
    WINDOW,
    WINDOW_UPDATE,
    Session,
    Stream,
)

_HDR = struct.Struct(">BBHII")


class RawPeer:
    """A client-side peer speaking raw frames to a server Session; ``drain`` reads what it answers."""

    def __init__(self, on_stream: object, drain: bool = True) -> None:
        self.sock, theirs = socket.socketpair()
        self.accepted: list[Stream] = []
        self.frames: list[tuple[int, int, int, int]] = []
        self._lock = threading.Lock()
        self.session = Session(theirs, client=False, on_stream=on_stream, name="t-limits")  # type: ignore[arg-type]
        self._reader: threading.Thread | None = None
        if drain:
            self._reader = threading.Thread(target=self._drain, daemon=True)
            self._reader.start()

    def _drain(self) -> None:
        buf = b""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return
                got, buf = split_frames(buf + data)
                with self._lock:
                    self.frames.extend(got)
        except OSError:
            pass

    def resets(self) -> set[int]:
        with self._lock:
            return {sid for kind, flags, sid, _ in self.frames if kind == WINDOW_UPDATE and flags & RST}

    def send(self, kind: int, flags: int, sid: int, payload: bytes = b"", length: int | None = None) -> None:
        self.sock.sendall(_HDR.pack(0, kind, flags, sid, len(payload) if length is None else length) + payload)

    def close(self) -> None:
        self.session.close()
        self.sock.close()
        if self._reader is not None:
            self._reader.join(10)


@pytest.fixture
def refusing() -> Iterator[RawPeer]:
    peer = RawPeer(lambda s: s.reset())
    yield peer
    peer.close()


def test_a_refused_stream_is_dropped_and_its_data_discarded(refusing: RawPeer) -> None:
    # hashicorp/yamux forgets a stream it reset and drops frames for it; kept, every stream the
    # peer opens and fills would hold a window's worth (256 KiB) here for good
    for i in range(20):
        sid = 2 * i + 1
        refusing.send(WINDOW_UPDATE, SYN, sid)
        refusing.send(DATA, 0, sid, b"x" * WINDOW)
    assert wait_until(lambda: len(refusing.resets()) == 20, 10)
    refusing.send(PING, SYN, 0, length=7)  # after all the data: answered once the reader read it
    assert wait_until(lambda: (PING, ACK, 0, 7) in refusing.frames, 10)
    session = refusing.session
    assert not session.closed, session.close_reason
    assert session.open_streams == 0
    assert not session._streams


def test_a_stream_the_peer_resets_is_dropped_and_later_data_for_it_ignored() -> None:
    peer = RawPeer(lambda s: peer.accepted.append(s))
    try:
        peer.send(WINDOW_UPDATE, SYN, 1)
        assert wait_until(lambda: len(peer.accepted) == 1, 10)
        peer.send(WINDOW_UPDATE, RST, 1)
        peer.send(DATA, 0, 1, b"late")  # in flight when the reset left: nobody reads it
        peer.send(PING, SYN, 0, length=9)
        assert wait_until(lambda: (PING, ACK, 0, 9) in peer.frames, 10)
        stream = peer.accepted[0]
        assert stream.done and stream.read() == b""
        assert not peer.session._streams and not peer.session.closed
    finally:
        peer.close()


def test_answers_to_pings_a_peer_never_reads_stay_bounded() -> None:
    # a peer flooding pings while reading nothing: each answer waited in memory for a socket
    # that never drains; now a few wait and the rest are dropped, as hashicorp/yamux does
    peer = RawPeer(lambda s: s.reset(), drain=False)
    try:
        batch = b"".join(_HDR.pack(0, PING, SYN, 0, i) for i in range(10000))
        for _ in range(30):  # 300,000 pings: far more answers than the socket buffers hold
            peer.sock.sendall(batch)
        peer.send(WINDOW_UPDATE, SYN, 1)  # the last frame: read once the pings are
        assert wait_until(lambda: peer.session.heard >= 300001, 60)
        late = peer.session._late
        with late._lock:
            queued = len(late._queued)
        assert queued <= 64, queued
        assert not peer.session.closed, peer.session.close_reason
    finally:
        peer.close()


def test_a_peer_that_never_reads_what_its_frames_need_answered_ends_the_session(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("plugbay.core.transport.ywrite.LATE_MAX", 100)
    monkeypatch.setattr("plugbay.core.transport.ylate.LATE_MAX", 100)
    peer = RawPeer(lambda s: s.reset(), drain=False)
    try:
        # each stream gets an ACK and a RST that cannot be sent: the socket is full of pongs first
        peer.sock.sendall(b"".join(_HDR.pack(0, PING, SYN, 0, i) for i in range(100000)))
        try:
            for i in range(200):
                peer.send(WINDOW_UPDATE, SYN, 2 * i + 1)
        except OSError:
            pass  # ended already
        assert wait_until(lambda: peer.session.closed, 30)
        assert "does not read" in peer.session.close_reason
    finally:
        peer.close()


def test_streams_past_the_cap_are_reset_and_the_rest_keep_working() -> None:
    peer = RawPeer(lambda s: peer.accepted.append(s))
    try:
        cap = peer.session.max_streams  # MAX_STREAMS, unless this process's descriptor limit is low
        assert cap <= MAX_STREAMS
        extra = 50
        peer.sock.sendall(b"".join(_HDR.pack(0, WINDOW_UPDATE, SYN, 2 * i + 1, 0)
                                   for i in range(cap + extra)))
        refused = {2 * i + 1 for i in range(cap, cap + extra)}
        assert wait_until(lambda: peer.resets() >= refused, 20)
        assert len(peer.accepted) == cap
        assert peer.session.open_streams == cap
        # data for a refused stream is dropped, not a protocol error
        peer.send(DATA, 0, min(refused), b"ignored")
        # a stream that ends makes room for the next
        peer.accepted[0].reset()
        late = 2 * (cap + extra) + 1
        peer.send(WINDOW_UPDATE, SYN, late)
        assert wait_until(lambda: len(peer.accepted) == cap + 1, 10)
        assert peer.accepted[-1].id == late and late not in peer.resets()
        assert not peer.session.closed, peer.session.close_reason
    finally:
        peer.close()


def test_a_window_filled_with_tiny_frames_costs_about_a_window_of_memory() -> None:
    # one queued object per 1-byte payload held ~40 bytes per byte of window: 512 streams of a
    # peer's tiny frames nobody reads came to gigabytes where hashicorp/yamux holds one buffer each
    peer = RawPeer(lambda s: peer.accepted.append(s))
    tracemalloc.start()
    try:
        peer.send(WINDOW_UPDATE, SYN, 1)
        assert wait_until(lambda: len(peer.accepted) == 1, 10)
        before = tracemalloc.get_traced_memory()[0]
        tiny = b"".join(_HDR.pack(0, DATA, 0, 1, 1) + bytes([i % 251]) for i in range(4096))
        for _ in range(WINDOW // 4096):  # the whole window, one byte per frame
            peer.sock.sendall(tiny)
        stream = peer.accepted[0]
        assert wait_until(lambda: stream.receive_window == 0, 60)
        held = tracemalloc.get_traced_memory()[0] - before
        assert held < 3 * WINDOW, f"{held} bytes held for a {WINDOW}-byte window"
        pattern = bytes(i % 251 for i in range(4096))
        assert read_exactly(stream, WINDOW) == pattern * (WINDOW // 4096)
        # small and large payloads, queued together, come out whole and in order
        mixed = [bytes([65 + i % 26]) * n for i, n in enumerate([1, 3, 1500, 2, 1024, 1025, 7, 60_000, 5])]
        for part in mixed:
            peer.send(DATA, 0, 1, part)
        assert read_exactly(stream, sum(map(len, mixed))) == b"".join(mixed)
        assert not peer.session.closed, peer.session.close_reason
    finally:
        tracemalloc.stop()
        peer.close()
