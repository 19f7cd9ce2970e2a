"""plugbay.core.transport.yamux on its own: frames, flow control, half-close, reset, ping, a vanished peer.

Two Sessions over a real socketpair; the wire bytes of the first frames are
checked against hashicorp/yamux's format (version 0, big-endian header).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

import pytest

from tests.resilience_util import wait_until
from tests.yamux_util import ended_by, read_exactly

from plugbay.core.transport import yamux
from plugbay.core.transport.bridges import bridge
from plugbay.core.transport.workers import Workers
from plugbay.core.transport.yamux import ACK, PING, SYN, WINDOW, WINDOW_UPDATE, Session, Stream, StreamClosed


class Pair:
    def __init__(self) -> None:
        a, b = socket.socketpair()
        self.accepted: list[Stream] = []
        self.ready = threading.Semaphore(0)

        def on_stream(s: Stream) -> None:
            self.accepted.append(s)
            self.ready.release()

        self.client = Session(a, client=True, on_stream=lambda s: s.reset(), name="t-cli")
        self.server = Session(b, client=False, on_stream=on_stream, name="t-srv")

    def open(self) -> tuple[Stream, Stream]:
        s = self.client.open()
        assert self.ready.acquire(timeout=10)
        return s, self.accepted[-1]

    def close(self) -> None:
        self.client.close()
        self.server.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    yield p
    p.close()



class BridgeEnds:
    """A bridged stream's local socket pair: ``local`` is the bridge's, ``far`` the test's end."""

    def __init__(self, timeout: float | None = None) -> None:
        self.local, self.far = socket.socketpair()
        self.local.settimeout(timeout)
        self.workers = Workers("plugbay-test-copy")

    def bridge(self, stream: Stream) -> None:
        bridge(stream, self.local, self.workers)

    def received(self) -> bytes:
        """All ``far`` gets until the bridge ends its side (10 s without a byte: a hang guard)."""
        self.far.settimeout(10)
        got = bytearray()
        while chunk := self.far.recv(1 << 20):
            got += chunk
        return bytes(got)

    def close(self) -> None:
        self.far.close()
        self.workers.close()


def test_round_trip_and_half_close(pair: Pair) -> None:
    c, s = pair.open()
    assert c.id % 2 == 1 and s.id == c.id
    c.write(b"hello")
    assert read_exactly(s, 5) == b"hello"
    s.write(b"world")
    assert read_exactly(c, 5) == b"world"
    c.close_write()
    assert s.read() == b""  # EOF after FIN
    s.write(b"still open the other way")
    assert read_exactly(c, 24) == b"still open the other way"
    s.close_write()
    assert c.read() == b""
    assert c.done and s.done
    with pytest.raises(StreamClosed):
        c.write(b"x")


def test_sender_stops_at_the_window(pair: Pair) -> None:
    c, s = pair.open()
    sent = [0]
    total = 4 * WINDOW

    def writer() -> None:
        chunk = b"z" * 16384
        while sent[0] < total:
            c.write(chunk)
            sent[0] += len(chunk)

    t = threading.Thread(target=writer, name="plugbay-test-writer", daemon=True)
    t.start()
    t.join(1.0)  # bounded wait: the writer must be stuck, not finished
    assert t.is_alive() and sent[0] <= WINDOW, f"sent {sent[0]} bytes past a {WINDOW}-byte window"
    assert read_exactly(s, total) == b"z" * total  # consuming opens the window again
    t.join(10)
    assert not t.is_alive()


def test_reset_wakes_a_blocked_reader(pair: Pair) -> None:
    c, s = pair.open()
    got: list[bytes] = []
    t = threading.Thread(target=lambda: got.append(s.read()), name="plugbay-test-reader")
    t.start()
    c.reset()
    t.join(10)
    assert got == [b""] and s.done


def test_peer_vanishing_ends_streams_and_close_does_not_raise(pair: Pair) -> None:
    c, s = pair.open()
    pair.server._sock.shutdown(socket.SHUT_RDWR)  # the other process dies
    assert c.read() == b""
    with pytest.raises(StreamClosed):
        for _ in range(100):
            c.write(b"x" * 1024)
    pair.client.close()  # already dead: must not raise
    assert pair.client.closed and pair.client.close_reason
    with pytest.raises(StreamClosed):
        pair.client.open()


def test_wire_format_and_ping_are_yamux() -> None:
    a, b = socket.socketpair()
    session = Session(a, client=False, on_stream=lambda s: None, name="t-wire")
    try:
        b.settimeout(10)
        # the peer (a yamux client) pings; we must answer ACK with the same opaque value
        b.sendall(struct.pack(">BBHII", 0, PING, SYN, 0, 0xC0FFEE))
        assert b.recv(12) == struct.pack(">BBHII", 0, PING, ACK, 0, 0xC0FFEE)
        # it opens stream 1 (odd: client-initiated); we ack it at once
        b.sendall(struct.pack(">BBHII", 0, WINDOW_UPDATE, SYN, 1, 0))
        assert b.recv(12) == struct.pack(">BBHII", 0, WINDOW_UPDATE, ACK, 1, 0)
        # our own streams are even and open with SYN
        session.open()
        assert b.recv(12) == struct.pack(">BBHII", 0, WINDOW_UPDATE, SYN, 2, 0)
        # a bad version ends the session
        b.sendall(struct.pack(">BBHII", 1, 0, 0, 0, 0))
        for _ in range(100):
            if session.closed:
                break
            threading.Event().wait(0.05)
        assert session.closed and "version 1" in session.close_reason
    finally:
        session.close()
        b.close()


def test_window_constant_matches_yamux() -> None:
    assert yamux.WINDOW == 256 * 1024


# ------------------------------------------------- against hashicorp/yamux (Go)


def _echo(stream: Stream) -> None:
    def run() -> None:
        try:
            while True:
                data = stream.read()
                if not data:
                    break
                stream.consumed(len(data))
                stream.write(data)
            stream.close_write()
        except StreamClosed:
            pass

    threading.Thread(target=run, name="plugbay-test-echo", daemon=True).start()


def dial_when_listening(proc: subprocess.Popen[str], path: str) -> socket.socket:
    """A connection to the unix socket ``path`` once the Go peer ``proc`` printed "listening"."""
    assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
    conn = socket.socket(socket.AF_UNIX)
    conn.settimeout(30)
    conn.connect(path)
    conn.settimeout(None)
    return conn


def _exchange_with_go_peer(session: Session) -> None:
    # after the Go side's own streams, it accepts one of ours and echoes it
    payload = bytes(range(256)) * 4096  # 1 MiB: several windows
    stream = session.open()
    writer = threading.Thread(target=lambda: (stream.write(payload), stream.close_write()),
                              name="plugbay-test-writer", daemon=True)
    writer.start()
    assert read_exactly(stream, len(payload) + 1) == payload
    writer.join(10)


@pytest.mark.go
@pytest.mark.parametrize("python_side", ["server", "client"])
def test_interop_with_hashicorp_yamux(python_side: str, tmp_path: object) -> None:
    import os
    import tempfile

    from tests.gobuild import build_go, go_missing_reason

    if go_missing_reason():
        pytest.skip(str(go_missing_reason()))
    peer = build_go("yamux_peer")
    d = tempfile.mkdtemp(prefix="ym", dir="/tmp")
    path = os.path.join(d, "y.sock")
    go_mode = "client" if python_side == "server" else "server"
    listener = None
    if python_side == "server":
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen(1)
    proc = subprocess.Popen([str(peer), go_mode, "unix", path, "3", str(3 * WINDOW + 123)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    session = None
    try:
        if listener is not None:
            listener.settimeout(30)
            conn, _ = listener.accept()
        else:
            conn = dial_when_listening(proc, path)
        conn.settimeout(None)
        session = Session(conn, client=python_side == "client", on_stream=_echo, name="t-go")
        _exchange_with_go_peer(session)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and out.strip().endswith("ok"), out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if session is not None:
            session.close()
        if listener is not None:
            listener.close()
        for n in os.listdir(d):
            os.unlink(os.path.join(d, n))
        os.rmdir(d)


def test_receive_window_grows_once_the_reader_consumes(pair: Pair) -> None:
    c, s = pair.open()
    c.write(b"a" * WINDOW)  # the whole first window
    first = read_exactly(s, WINDOW)  # consuming returns it, grown to MAX_WINDOW
    assert first == b"a" * WINDOW
    done = threading.Event()

    def writer() -> None:
        c.write(b"b" * yamux.MAX_WINDOW)  # fits the grown window: never blocks on the reader
        done.set()

    t = threading.Thread(target=writer, name="plugbay-test-writer", daemon=True)
    t.start()
    assert done.wait(10), "the sender could not use the grown window"
    more = threading.Thread(target=lambda: c.write(b"c"), name="plugbay-test-writer", daemon=True)
    more.start()
    more.join(0.5)  # bounded: one byte past the grown window must wait for the reader
    assert more.is_alive()
    assert read_exactly(s, yamux.MAX_WINDOW + 1) == b"b" * yamux.MAX_WINDOW + b"c"
    t.join(10)
    more.join(10)


def test_oversized_data_frame_ends_the_session_without_waiting_for_it() -> None:
    # a frame no window allows, payload never sent: the session must not wait for (or allocate) it
    reason = ended_by(struct.pack(">BBHII", 0, WINDOW_UPDATE, SYN, 1, 0), struct.pack(">BBHII", 0, 0, 0, 1, 2**32 - 1),
                      name="t-big")
    assert "more than its window" in reason


_H = struct.Struct(">BBHII")


@pytest.mark.parametrize("case", ["past-window", "opened-twice", "bad-version"])
def test_a_stream_breaking_the_protocol_gets_go_away_protocol_error(case: str) -> None:
    # hashicorp/yamux answers a stream's protocol error with GoAway(1) before it ends the session
    # (the Go peer logs "yamux protocol error", not a bare EOF); a bad version gets no GoAway there
    syn = _H.pack(0, WINDOW_UPDATE, SYN, 1, 0)
    sent = {"past-window": syn + _H.pack(0, 0, 0, 1, WINDOW + 1) + b"x" * (WINDOW + 1),
            "opened-twice": syn + syn, "bad-version": _H.pack(1, PING, SYN, 0, 7)}[case]
    a, b = socket.socketpair()
    session = Session(a, client=False, on_stream=lambda s: None, name="t-proto")
    try:
        try:
            b.sendall(sent)
        except BrokenPipeError:
            pass  # past-window: refused at its header, before its body is read
        session._reader.join(10)
        assert session.closed and "protocol error" in session.close_reason
        b.settimeout(5)
        got = b""
        try:
            while chunk := b.recv(65536):  # ends: the session closed its socket
                got += chunk
        except ConnectionResetError:
            pass  # past-window: closed with the body unread (what was sent before it is read first)
        frames = [_H.unpack_from(got, i) for i in range(0, len(got) - 11, 12)]
        assert ((0, yamux.GO_AWAY, 0, 0, 1) in frames) == (case != "bad-version"), frames
    finally:
        session.close()
        b.close()


def test_connection_ending_inside_a_large_payload_ends_the_session() -> None:
    a, b = socket.socketpair()
    streams: list[Stream] = []
    session = Session(a, client=False, on_stream=streams.append, name="t-cut")
    try:
        b.sendall(struct.pack(">BBHII", 0, WINDOW_UPDATE, SYN, 1, 0))
        b.sendall(struct.pack(">BBHII", 0, 0, 0, 1, 200_000) + b"q" * 70_000)
        b.shutdown(socket.SHUT_WR)
        session._reader.join(10)
        assert session.closed and session.close_reason
        assert streams and streams[0].read() == b""  # the cut frame is not delivered; the stream ends
    finally:
        session.close()
        b.close()


@pytest.mark.parametrize("cut", [False, True])
def test_a_bad_payload_spliced_to_a_bridge_ends_the_session(cut: bool) -> None:
    # a bridged stream's large payloads are spliced straight off the socket; a peer that
    # overruns the window there, or stops inside such a payload, still ends the session,
    # and the local side sees only the bytes of whole frames
    a, b = socket.socketpair()
    ends = BridgeEnds()
    accepting = Accepting(a, "t-splice")
    session = accepting.session
    try:
        b.sendall(struct.pack(">BBHII", 0, WINDOW_UPDATE, SYN, 1, 0))
        assert accepting.opened()
        ends.bridge(accepting.streams[1])
        b.sendall(struct.pack(">BBHII", 0, 0, 0, 1, 100_000) + b"a" * 100_000)  # whole: the peer sends in bulk
        if cut:
            b.sendall(struct.pack(">BBHII", 0, 0, 0, 1, 150_000) + b"b" * 70_000)
            b.shutdown(socket.SHUT_WR)
        else:  # 100_000 + 200_000 > the 256 KiB window: refused at its header, unread
            try:
                b.sendall(struct.pack(">BBHII", 0, 0, 0, 1, 200_000) + b"b" * 200_000)
            except BrokenPipeError:
                pass  # the session ended before taking it all
        session._reader.join(10)
        assert session.closed
        assert ("more than its window" in session.close_reason) != cut
        got = ends.received()
        assert got[:100_000] == b"a" * 100_000 and len(got) <= 100_000 + (70_000 if cut else 0)
    finally:
        session.close()
        b.close()
        ends.close()


def test_bridge_keeps_order_when_the_local_side_stalls(pair: Pair) -> None:
    # the session reader sends straight to the bridged socket until it is full, then the
    # bridge queues; a local reader that stalls and resumes must get every byte in order
    c, s = pair.open()
    ends = BridgeEnds()
    try:
        ends.bridge(s)
        payload = bytes(range(256)) * (12 * 1024)  # 3 MiB: far more than the socket buffers
        writer = threading.Thread(target=lambda: (c.write(payload), c.close_write()),
                                  name="plugbay-test-writer", daemon=True)
        writer.start()
        writer.join(0.5)  # bounded: nobody reads far yet, so the writer must be held by the window
        assert writer.is_alive()
        got = ends.received()
        assert len(got) == len(payload) and got == payload
        writer.join(10)
    finally:
        s.reset()
        ends.close()


@pytest.mark.parametrize("spliced", [True, False])
def test_bridge_carries_local_bytes_to_the_peer_whole_and_in_order(pair: Pair, spliced: bool) -> None:
    # local -> peer: a plain blocking socket pair carrying bulk is spliced (the kernel moves the
    # bytes, framed by the window); a local socket with a timeout is copied through a buffer:
    # both exact, in order
    c, s = pair.open()
    assert pair.server.can_splice
    ends = BridgeEnds(timeout=None if spliced else 30)
    far = ends.far
    payload = bytes(range(251)) * (16 * 1024)  # ~4 MiB: many windows and pipe fills, odd-sized
    try:
        ends.bridge(s)
        writer = threading.Thread(target=lambda: (far.sendall(payload), far.shutdown(socket.SHUT_WR)),
                                  name="plugbay-test-writer", daemon=True)
        writer.start()
        got = read_exactly(c, len(payload) + 1)  # + 1: the FIN must follow the last byte
        assert len(got) == len(payload) and got == payload
        writer.join(10)
    finally:
        c.reset()
        ends.close()


def test_bridge_carries_mixed_small_and_large_frames_from_the_peer_in_order(pair: Pair) -> None:
    # peer -> local: large payloads are spliced by the session reader into the bridged socket
    # (headers and small payloads between them read exactly, never ahead); small ones are copied
    c, s = pair.open()
    ends = BridgeEnds()
    sizes = [70_000, 12, 200_001, 5, 300, 65_536, 9, 131_072] * 6 + [17] * 12 + [250_000] * 4
    pattern = bytes(range(253)) * 1024
    payload = b"".join(pattern[i % 251:i % 251 + n] for i, n in enumerate(sizes))
    try:
        ends.bridge(s)

        def write() -> None:
            at = 0
            for n in sizes:
                c.write(payload[at:at + n])
                at += n
            c.close_write()

        writer = threading.Thread(target=write, name="plugbay-test-writer", daemon=True)
        writer.start()
        got = ends.received()
        assert len(got) == len(payload) and got == payload
        writer.join(10)
    finally:
        s.reset()
        ends.close()


def test_session_reader_returns_the_window_of_what_it_sends_to_a_sink(pair: Pair) -> None:
    # nothing calls take() here: the writer gets past its first window only if the session
    # reader itself returns the window of the bytes it sent straight to the sink
    c, s = pair.open()
    local, far = socket.socketpair()
    local.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)  # takes every byte: nothing queues
    total = 4 * WINDOW
    try:
        s.attach_sink(local)
        writer = threading.Thread(target=lambda: [c.write(b"w" * 16384) for _ in range(total // 16384)],
                                  name="plugbay-test-writer", daemon=True)
        writer.start()
        writer.join(10)
        assert not writer.is_alive(), "the writer is stuck: no window came back"
        far.settimeout(10)
        got = bytearray()
        while len(got) < total:
            chunk = far.recv(1 << 20)
            assert chunk
            got += chunk
        assert got == b"w" * total
    finally:
        s.attach_sink(None)
        s.reset()
        local.close()
        far.close()


def raw_frame(pattern: bytes, flags: int, sid: int, size: int, skew: int) -> bytes:
    """A data frame for stream ``sid`` carrying ``pattern[skew:skew + size]``, written by hand."""
    return struct.pack(">BBHII", 0, 0, flags, sid, size) + pattern[skew:skew + size]


class Accepting:
    """A server session on ``sock`` that records the streams the peer opens, by id."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.streams: dict[int, Stream] = {}
        self._opened = threading.Semaphore(0)
        self.session = Session(sock, client=False, on_stream=self._on_stream, name=name)

    def _on_stream(self, s: Stream) -> None:
        self.streams[s.id] = s
        self._opened.release()

    def opened(self) -> bool:
        """One more stream was opened (within 10 s)."""
        return self._opened.acquire(timeout=10)


def test_large_frames_straddling_the_readers_buffer_are_delivered_whole_and_in_order() -> None:
    # the reader passes the received part of a large frame on at once (no copy) and the rest
    # after it: every byte must still arrive in order, a FIN only after the frame's last byte,
    # and a SYN frame split so must open its stream once. All frames are queued before the
    # session reads, so where they straddle its 256 KiB refills is fixed (frames.py's sizes)
    a, b = socket.socketpair()
    b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
    b.settimeout(10)
    pattern = bytes(range(256)) * 1025

    def frame(flags: int, sid: int, size: int, skew: int) -> bytes:
        return raw_frame(pattern, flags, sid, size, skew)

    sizes = {1: 200_000, 3: 50_000 + 212_144, 5: WINDOW}
    b.sendall(struct.pack(">BBHII", 0, 0, 0, 0, 0)  # an empty frame: the reader's first refill is small
              + frame(SYN, 1, 200_000, 1)  # received mostly straight into its own buffer
              + frame(SYN, 3, 50_000, 3) + frame(yamux.FIN, 3, 212_144, 3 + 50_000)  # ends past the refill
              + frame(SYN, 5, WINDOW, 5))  # opens a stream, ends past the next refill
    accepting = Accepting(a, "t-split")
    session, streams = accepting.session, accepting.streams
    try:
        for _ in sizes:
            assert accepting.opened()
        for sid, size in sizes.items():
            assert read_exactly(streams[sid], size) == pattern[sid:sid + size], sid
        assert streams[3].read() == b"" and not streams[3]._reset  # its FIN, after the last byte
        assert sorted(streams) == [1, 3, 5] and not session.closed
    finally:
        session.close()
        b.close()


def test_payloads_a_stream_still_queues_survive_the_readers_next_refills() -> None:
    # payloads of 64 KiB and more are views of the reader's refill buffer; the reader reuses
    # that buffer only once no such view is alive, so bytes a stream has not read yet must come
    # out intact after many later refills (here: small frames of another stream)
    a, b = socket.socketpair()
    b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
    b.settimeout(10)
    pattern = bytes(range(251)) * 2000  # a period that no frame size below divides

    big = [raw_frame(pattern, SYN if i == 0 else 0, 1, 70_000, 7 * i) for i in range(3)]  # 210,000 bytes
    small = [raw_frame(pattern, SYN if i == 0 else 0, 3, 1_000, i) for i in range(200)]
    accepting = Accepting(a, "t-reuse")
    session, streams = accepting.session, accepting.streams
    try:
        b.sendall(b"".join(big))  # in the window
        assert accepting.opened()
        for i in range(0, 200, 20):  # in bursts: the reader refills many times meanwhile
            b.sendall(b"".join(small[i:i + 20]))
        assert accepting.opened()
        assert read_exactly(streams[3], 200_000) == b"".join(pattern[i:i + 1_000] for i in range(200))
        assert read_exactly(streams[1], 210_000) == b"".join(pattern[7 * i:7 * i + 70_000] for i in range(3))
        assert not session.closed
    finally:
        session.close()
        b.close()


def test_a_session_closed_under_its_readers_splice_never_reads_a_reused_descriptor() -> None:
    # the session reader splices by descriptor number; a close() from another thread must not
    # free that number while the reader may still use it: a socket opened meanwhile (which the
    # kernel gives the lowest free number) would have its bytes taken into the closed session.
    # The reader is held (its profile hook) at its splice call, arguments made, the number read.
    import os
    import sys
    from types import FrameType
    from typing import Any

    reached, go = threading.Event(), threading.Event()

    def hold(frame: FrameType, event: str, arg: Any) -> None:
        if threading.current_thread().name != "plugbay-t-reuse-read":
            sys.setprofile(None)
        elif event == "c_call" and arg is os.splice and frame.f_code.co_name == "_splice_frame":
            sys.setprofile(None)
            reached.set()
            go.wait(30)

    a, b = socket.socketpair()
    ends = BridgeEnds()
    threading.setprofile(hold)
    try:
        accepting = Accepting(a, "t-reuse")
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
    session, number = accepting.session, a.fileno()
    closer = threading.Thread(target=lambda: session.abort("closed by the test"), name="plugbay-test-closer")
    others: list[socket.socket] = []
    try:
        b.sendall(struct.pack(">BBHII", 0, WINDOW_UPDATE, SYN, 1, 0))
        assert accepting.opened()
        ends.bridge(accepting.streams[1])
        b.sendall(struct.pack(">BBHII", 0, 0, 0, 1, 100_000) + b"a" * 100_000)  # whole: the peer sends in bulk
        b.sendall(struct.pack(">BBHII", 0, 0, 0, 1, 100_000) + b"b" * 50_000)  # spliced: the reader is held
        assert reached.wait(10)
        closer.start()
        for _ in range(50):  # bounded: until the session let go of its socket, if it does now
            if session.closed and a.fileno() == -1:
                break
            threading.Event().wait(0.01 if not session.closed else 0.02)
        for _ in range(4):
            others += socket.socketpair()
        victim = next((s for s in others if s.fileno() == number), None)
        for s in others:  # every new socket's peer sends: the victim (if any) has bytes waiting
            if s is not victim:
                s.sendall(b"not the session's")
        go.set()
        closer.join(10)
        assert session.closed
        if victim is not None:
            victim.settimeout(2)
            try:
                waiting = victim.recv(100)
            except TimeoutError:
                waiting = b""
            assert waiting == b"not the session's", "the closed session's reader took another socket's bytes"
        assert victim is None, f"descriptor {number} was handed out while the session's reader could still use it"
    finally:
        go.set()
        if closer.is_alive() or not closer.ident:
            session.close()
        closer.join(10)
        for s in others:
            s.close()
        b.close()
        ends.close()


def test_a_session_closed_under_a_spliced_send_never_writes_to_a_reused_descriptor(pair: Pair) -> None:
    # the writer side of the test above: a bridge sending a spliced frame names the session's
    # socket by number too; held at that splice (header sent, number read), the session is
    # aborted elsewhere and sockets are opened: none may get that number, none may get its bytes
    import os
    import sys
    from types import FrameType
    from typing import Any

    reached, go = threading.Event(), threading.Event()
    failed: list[BaseException] = []

    def hold(frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_call" and arg is os.splice and frame.f_code.co_name == "_splice_some":  # _send_piped's
            sys.setprofile(None)
            reached.set()
            go.wait(30)

    c, _ = pair.open()
    number = pair.client._sock.fileno()
    r, w = os.pipe()
    os.write(w, b"s" * 60_000)

    def send() -> None:
        sys.setprofile(hold)
        try:
            c.write_piped(r, 60_000)
        except StreamClosed as exc:
            failed.append(exc)
        finally:
            sys.setprofile(None)

    sender = threading.Thread(target=send, name="plugbay-test-sender")
    closer = threading.Thread(target=lambda: pair.client.abort("closed by the test"), name="plugbay-test-closer")
    others: list[socket.socket] = []
    try:
        sender.start()
        assert reached.wait(10)
        closer.start()
        for _ in range(50):  # bounded: until the session let go of its socket, if it does now
            if pair.client.closed and pair.client._sock.fileno() == -1:
                break
            threading.Event().wait(0.01 if not pair.client.closed else 0.02)
        for _ in range(4):
            others += socket.socketpair()
        go.set()
        sender.join(10)
        closer.join(10)
        for s in others:
            s.settimeout(0.2)
            try:
                assert not s.recv(100), "a spliced frame went to another socket"
            except TimeoutError:
                pass
        assert number not in [s.fileno() for s in others], \
            f"descriptor {number} was handed out while a sender could still use it"
        assert failed and pair.client.closed  # the frame could not be sent: the session is gone
    finally:
        go.set()
        sender.join(10)
        closer.join(10)
        for s in others:
            s.close()
        os.close(r)
        os.close(w)


def test_a_spliced_frame_cut_short_ends_the_session(pair: Pair) -> None:
    # a frame's header is on the wire before its payload is spliced after it; if the splice
    # fails part way (here: the pipe holds half the payload and ends), nothing may follow that
    # header on the wire as if the frame were whole: the session must end, the peer's streams
    # must never get bytes of other frames as payload
    import os

    c, s = pair.open()
    c2, s2 = pair.open()
    r, w = os.pipe()
    try:
        os.write(w, b"h" * 30_000)
        os.close(w)
        with pytest.raises(StreamClosed):
            c.write_piped(r, 60_000)
        try:
            c2.write(b"x" * 40_000)  # would complete the cut frame on the wire
            c2.close_write()
        except StreamClosed:
            pass
        s2_got = read_exactly(s2, 40_001)
        assert not s2_got or s2_got == b"x" * 40_000
        got = read_exactly(s, 60_001)
        assert b"x" not in got, "another stream's frame was taken as the cut frame's payload"
        assert pair.client.closed
    finally:
        os.close(r)


def _stuck_writer(session: Session) -> tuple[Stream, threading.Thread]:
    """A stream whose writer is blocked in a big write, on a session whose peer never reads."""
    stream = session.open()
    writer = threading.Thread(target=lambda: _write_ignoring_close(stream, b"x" * 200_000),
                              name="plugbay-test-writer", daemon=True)
    writer.start()
    for _ in range(1000):  # the writer holds the send lock once the socket is full
        if session._wlock.locked():
            break
        threading.Event().wait(0.01)
    assert session._wlock.locked()
    return stream, writer


def _write_ignoring_close(stream: Stream, data: bytes) -> None:
    try:
        stream.write(data)
    except StreamClosed:
        pass


def test_close_ends_while_a_writer_is_stuck_on_a_peer_that_never_reads() -> None:
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    session = Session(a, client=True, on_stream=lambda s: s.reset(), name="t-stuck")
    try:
        _, writer = _stuck_writer(session)
        closer = threading.Thread(target=session.close, name="plugbay-test-close", daemon=True)
        closer.start()
        closer.join(10)  # a hang guard, not a timing: close() waits a bounded while for its GoAway
        assert not closer.is_alive(), "close() hangs behind the stuck writer"
        assert session.closed
        writer.join(10)
        assert not writer.is_alive()
    finally:
        session.abort("test over")
        b.close()


def test_a_ping_waits_for_room_on_a_socket_full_for_a_moment() -> None:
    # bulk traffic fills the session's socket for a while; a ping then is late, not failed
    # (a failed ping makes a plugin give its live session up for another host connection)
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    session = Session(a, client=True, on_stream=lambda s: s.reset(), name="t-full")
    try:
        _ping_on_a_full_socket(session, a, b)
    finally:
        session.abort("test over")
        b.close()


def _ping_on_a_full_socket(session: Session, a: socket.socket, b: socket.socket) -> None:
    stale_ack = struct.pack(">BBHII", 0, PING, ACK, 0, 0xFFFF)  # harmless: answers no ping
    while True:
        try:
            a.send(stale_ack, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
    answered: list[bool] = []
    pinger = threading.Thread(target=lambda: answered.append(session.ping(10)), name="plugbay-test-ping")
    pinger.start()
    pinger.join(0.3)
    assert not answered, "the ping gave up on a socket that was full only for a moment"
    peer = Session(b, client=False, on_stream=lambda s: s.reset(), name="t-full-peer")  # reads it all now
    try:
        pinger.join(15)
        assert answered == [True]
    finally:
        peer.abort("test over")


def test_a_dying_session_ends_the_bridge_of_an_idle_local_side(pair: Pair) -> None:
    # the local side neither reads (the drain waits to send) nor writes (the up loop waits to
    # receive): only the session ending can end both loops, by shutting the local socket
    c, s = pair.open()
    ends = BridgeEnds()
    local = ends.local
    try:
        ends.bridge(s)
        writer = threading.Thread(target=lambda: _write_ignoring_close(c, b"y" * (3 << 20)),
                                  name="plugbay-test-writer", daemon=True)
        writer.start()
        writer.join(0.5)  # bounded: nobody reads far, so the writer is held by the window
        assert writer.is_alive()
        pair.server.abort("the test ends the session")
        ends.received()  # far sees the end once the bridge's loops end
        for _ in range(1000):  # both loops ended: the last one closed the local socket
            if local.fileno() == -1:
                break
            threading.Event().wait(0.01)
        assert local.fileno() == -1
        pair.client.abort("test over")
        writer.join(10)
    finally:
        ends.close()


def test_a_dying_session_still_delivers_what_it_received_to_the_bridged_local_side(pair: Pair) -> None:
    # as hashicorp/yamux after a force-close: bytes already received are still read out
    import fcntl
    import sys
    import termios

    def unread(sock: socket.socket) -> int:
        buf = bytearray(4)
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf)
        return int.from_bytes(buf, sys.byteorder)

    c, s = pair.open()
    ends = BridgeEnds()
    try:
        ends.bridge(s)
        writer = threading.Thread(target=lambda: _write_ignoring_close(c, b"y" * (3 << 20)),
                                  name="plugbay-test-writer", daemon=True)
        writer.start()
        seen = (-1, -1)
        for _ in range(200):  # bounded: until the window holds the writer and nothing moves
            threading.Event().wait(0.05)
            now = (unread(ends.far), s._buffered)
            if now == seen:
                break
            seen = now
        in_far, queued = seen
        assert queued > 0, "nothing was left queued in the stream: the test shows nothing"
        pair.server.abort("the test ends the session")
        got = len(ends.received())
        assert got >= in_far + queued, (got, in_far, queued)
        pair.client.abort("test over")
        writer.join(10)
    finally:
        ends.close()


class _ShortSocket(socket.socket):
    """A real socket whose non-blocking sends of a GoAway get 5 bytes out, then find it full (a
    TCP buffer that fills inside a header); everything else is sent as usual."""

    cut = threading.Event()

    def send(self, data: object, flags: int = 0) -> int:  # type: ignore[override]
        if flags & socket.MSG_DONTWAIT and self.cut.is_set():
            raise BlockingIOError  # full from now on, for a sender that does not wait
        if flags & socket.MSG_DONTWAIT and bytes(data)[1:2] == bytes([yamux.GO_AWAY]):  # type: ignore[call-overload]
            self.cut.set()
            return super().send(bytes(data)[:5], flags)  # type: ignore[call-overload]
        return super().send(data, flags)  # type: ignore[call-overload]


def test_a_goaway_cut_short_by_close_is_followed_by_no_other_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    # close() gives up on a GoAway whose header is half out; a writer waiting for the send lock
    # must not then put its frame right after that half header (the peer would read a frame
    # made of both), even if it gets the lock before close() ends the session
    from tests.race_util import PauseAt

    monkeypatch.setattr(yamux, "_CLOSE_WAIT", 0.3)
    a, far = socket.socketpair()
    sock = _ShortSocket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=a.detach())
    session = Session(sock, client=True, on_stream=lambda s: s.reset(), name="t-short")
    stream = session.open()
    pause = PauseAt(Session._shutdown.__code__, "call")
    failed: list[BaseException] = []

    def closing() -> None:
        pause.install()
        session.close()

    def writing() -> None:
        try:
            stream.write(b"z")
        except StreamClosed as exc:
            failed.append(exc)

    closer = threading.Thread(target=closing, name="plugbay-test-close", daemon=True)
    writer = threading.Thread(target=writing, name="plugbay-test-writer", daemon=True)
    try:
        closer.start()
        assert _ShortSocket.cut.wait(10)
        writer.start()  # waits for the send lock close() holds
        pause.wait_reached()  # close() gave up on the GoAway, the session not yet ended
        writer.join(10)
        assert not writer.is_alive()
    finally:
        pause.release()
        closer.join(10)
        _ShortSocket.cut.clear()
    far.settimeout(10)
    wire = b""
    while chunk := far.recv(1 << 16):
        wire += chunk
    far.close()
    assert wire[12:] == struct.pack(">BBHII", 0, yamux.GO_AWAY, 0, 0, 0)[:5]  # the half header, then nothing
    assert failed  # the writer was told the session ended


def test_a_ping_that_waited_for_room_gets_no_more_than_its_timeout_for_the_answer() -> None:
    # ping(timeout) never takes longer than timeout: time spent waiting for room on a full
    # socket counts against the answer's wait (an answer later than that is no answer)
    import time

    a, far = socket.socketpair()
    junk = b"j" * 65536
    filled = 0
    while True:  # the socket full before the session starts: its ping must wait for room
        try:
            filled += a.send(junk, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
    session = Session(a, client=True, on_stream=lambda s: s.reset(), name="t-pingwait")
    result: list[bool] = []
    began: list[float] = []

    def ping() -> None:
        began.append(time.monotonic())  # here, not before the thread starts: a late thread would move the timeout
        result.append(session.ping(2.0))

    pinger = threading.Thread(target=ping, name="plugbay-test-ping")
    try:
        pinger.start()
        threading.Event().wait(1.0)  # the ping waits for room meanwhile
        far.settimeout(10)
        wire = b""
        while len(wire) < filled + 12:  # the junk, then the ping's header
            wire += far.recv(1 << 20)
        pid = struct.unpack(">BBHII", wire[filled:filled + 12])[4]
        threading.Event().wait(max(0.0, began[0] + 2.6 - time.monotonic()))  # past the ping's timeout
        far.sendall(struct.pack(">BBHII", 0, PING, ACK, 0, pid))
        pinger.join(10)
        assert result == [False]
    finally:
        session.abort("test over")
        far.close()


def test_an_empty_data_frame_between_two_large_ones_leaves_a_queued_payload_intact() -> None:
    # a large payload a stream still queues lives in the reader's buffer; an empty DATA frame (legal:
    # a SYN may ride one) reads nothing, so it must not free that buffer for the next large payload
    a, b = socket.socketpair()
    b.settimeout(10)
    size = 200 * 1024
    accepting = Accepting(a, "t-empty")
    session, streams = accepting.session, accepting.streams
    try:
        b.sendall(struct.pack(">BBHII", 0, WINDOW_UPDATE, SYN, 1, 0)
                  + struct.pack(">BBHII", 0, WINDOW_UPDATE, SYN, 3, 0))
        assert accepting.opened() and accepting.opened()
        for sid, fill in ((1, b"A"), (3, b"")):  # stream 1's payload stays queued: nobody reads it yet
            b.sendall(struct.pack(">BBHII", 0, 0, 0, sid, len(fill) * size))
            time.sleep(0.1)  # the header alone first: the payload is then received into a buffer of its own
            b.sendall(fill * size)
            time.sleep(0.1)
        b.sendall(struct.pack(">BBHII", 0, 0, 0, 3, size))
        time.sleep(0.1)
        b.sendall(b"B" * size)
        assert read_exactly(streams[3], size) == b"B" * size
        assert read_exactly(streams[1], size) == b"A" * size
        assert not session.closed
    finally:
        session.close()
        b.close()


@pytest.mark.parametrize("sid", [0, 2], ids=["stream-0", "the-server's-parity"])
def test_a_stream_opened_by_the_wrong_side_ends_the_session(sid: int) -> None:
    a, b = socket.socketpair()
    b.settimeout(10)
    accepting = Accepting(a, "t-wrong-side")  # the server side: the peer (client) opens odd ids only
    try:
        b.sendall(struct.pack(">BBHII", 0, WINDOW_UPDATE, SYN, sid, 0) + struct.pack(">BBHII", 0, 0, 0, sid, 5)
                  + b"hello")
        accepting.session._reader.join(10)
        assert accepting.session.closed and "opened by the wrong side" in accepting.session.close_reason
        assert not accepting.streams  # nothing was routed, nothing delivered
    finally:
        accepting.session.close()
        b.close()


def test_a_stream_the_peer_opened_just_as_the_session_ended_is_ended_too() -> None:
    # the reader still holds frames it read before the session ended; a stream it opened from
    # them after the end was never reset, and whoever read it (a bridge, a drain) waited forever
    a, b = socket.socketpair()
    handed: list[Stream] = []
    sessions: list[Session] = []

    def on_stream(stream: Stream) -> None:
        handed.append(stream)
        if len(handed) == 1:  # hold the reader until the session has ended under it
            deadline = time.monotonic() + 10
            while not (sessions and sessions[0].closed) and time.monotonic() < deadline:
                time.sleep(0.01)

    b.sendall(struct.pack(">BBHII", 0, WINDOW_UPDATE, SYN, 1, 0) + struct.pack(">BBHII", 0, WINDOW_UPDATE, SYN, 3, 0))
    session = Session(a, client=False, on_stream=on_stream, name="t-late-syn")
    sessions.append(session)
    try:
        assert wait_until(lambda: len(handed) >= 1, 10)
        session.abort("test over")
        assert not session._reader.is_alive()
        for stream in handed:  # each one a reader of it would see end, at once
            assert stream.done, stream.id
            assert stream.read() == b""
    finally:
        session.abort("test over")
        b.close()


_OPENING = 64  # streams an opener keeps open at most (see opener below)


def test_two_sessions_writing_in_bulk_both_ways_while_opening_streams_never_lock_up() -> None:
    # each reader acks the streams the peer opens; were it to wait for its send lock (held by a
    # writer blocked on the peer, whose reader waits the same way) neither side would read again
    a, b = socket.socketpair()
    stop = threading.Event()
    progress = {"bulk-a": 0, "bulk-b": 0, "open-a": 0, "open-b": 0}
    threads: list[threading.Thread] = []

    def start(target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name="plugbay-test-load", daemon=True)
        threads.append(thread)
        thread.start()

    def drained(stream: Stream) -> None:
        def drain() -> None:
            with contextlib.suppress(StreamClosed):
                while data := stream.read():
                    stream.consumed(len(data))
                stream.close_write()  # ended both ways: the session drops it (MAX_STREAMS counts open ones)
        start(drain)

    sides = {"a": Session(a, client=True, on_stream=drained, name="t-a"),
             "b": Session(b, client=False, on_stream=drained, name="t-b")}

    def bulk(tag: str) -> None:
        stream = sides[tag].open()
        with contextlib.suppress(StreamClosed):
            while not stop.is_set():
                stream.write(b"x" * (256 * 1024))
                progress["bulk-" + tag] += 1

    def opener(tag: str) -> None:
        # at most _OPENING of its streams not yet ended by the peer: it drains each on a thread of its
        # own, which a loaded machine starves while opening costs little, and past MAX_STREAMS open
        # it would reset the new ones (its cap, not a lock-up); a lock-up still stalls the opener
        unended: deque[Stream] = deque()
        with contextlib.suppress(StreamClosed):
            while not stop.is_set():
                if len(unended) == _OPENING:
                    unended.popleft().read()  # b"" at the peer's FIN (or once the session ends)
                stream = sides[tag].open()
                stream.write(b"hi")
                stream.close_write()
                unended.append(stream)
                progress["open-" + tag] += 1

    try:
        for tag in sides:
            for _ in range(2):
                start(lambda t=tag: bulk(t))  # type: ignore[misc]
            start(lambda t=tag: opener(t))  # type: ignore[misc]
        time.sleep(3)  # the lock-up came within 4 s, most often within 1
        for _ in range(2):  # a lock-up is for good; a loaded machine may starve one writer for a second
            before = dict(progress)
            time.sleep(3)
            stalled = [k for k in progress if progress[k] == before[k]]
            assert not stalled, (stalled, progress)
    finally:
        stop.set()
        for session in sides.values():
            session.abort("test over")
        for thread in threads:
            thread.join(10)
    assert not any(t.is_alive() for t in threads)


def test_bytes_after_the_local_side_closed_end_a_stream_closed_both_ways_without_a_reset(pair: Pair) -> None:
    # a TLS peer says goodbye (close_notify) and closes after the local side has gone: hashicorp/yamux
    # has dropped the stream once FINs crossed, and logged the reset that used to follow as a frame
    # for a missing stream
    c, s = pair.open()
    resets: list[int] = []
    send_rst = pair.server._send_rst
    pair.server._send_rst = lambda sid: (resets.append(sid), send_rst(sid))  # type: ignore[method-assign]
    ends = BridgeEnds()
    try:
        ends.bridge(s)
        ends.far.close()  # the local side (grpcio) is gone: the bridge sends its FIN
        assert c.read() == b""
        c.write(b"g" * 24)
        c.close_write()
        # the bridge ends: it closes its end
        assert wait_until(lambda: ends.local.fileno() == -1, 10, step=0.01), "the bridge never ended"
        assert resets == [] and not s._reset
    finally:
        ends.close()


def test_bytes_after_the_local_side_closed_still_reset_a_stream_the_peer_keeps_open(pair: Pair) -> None:
    # the peer goes on sending to a local side that is gone: it must learn (a reset), not block
    c, s = pair.open()
    ends = BridgeEnds()
    try:
        ends.bridge(s)
        ends.far.close()
        assert c.read() == b""
        c.write(b"g" * 24)  # and no FIN: the bridge gives up waiting for one and resets
        assert wait_until(lambda: c._reset, 10, step=0.01), "the peer was never told the bytes it sends go nowhere"
    finally:
        ends.close()
