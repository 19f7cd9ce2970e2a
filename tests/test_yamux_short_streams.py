"""Window updates of short bridged streams (brokered calls) against hashicorp/yamux.

hashicorp/yamux drops a stream once both sides sent their FIN, and logs any later frame for it as
"frame for missing stream" (on a go-plugin plugin's stderr, at WARNING in the host's log). A window
update computed before the peer's FIN but sent after it (and after this side's FIN), or one sent at
all for a stream that carried a few bytes (hashicorp/yamux sends none until half the window is
owed), could follow the stream's end. tests/go/yamux_rpc counts both on the real library. So does
a new stream's ACK the session reader had to queue, should the stream's own frames overtake it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from tests.resilience_util import wait_until
from tests.test_yamux import dial_when_listening

from plugbay.core.transport.bridges import bridge
from plugbay.core.transport.workers import Workers
from plugbay.core.transport.yamux import (
    _HDR,
    ACK,
    DATA,
    FIN,
    GO_AWAY,
    PING,
    SYN,
    WINDOW,
    WINDOW_UPDATE,
    Session,
    Stream,
)

STREAMS = 300
REQUEST = b"q" * 200
RESPONSE = b"r" * 129  # the size of a small gRPC response, as in a brokered callback
PARALLEL = 8


def _read_all(sock: socket.socket, limit: int | None = None) -> bytes:
    """What ``sock`` receives until EOF, or ``limit`` bytes (10 s without a byte: a hang guard)."""
    sock.settimeout(10)
    got = bytearray()
    while limit is None or len(got) < limit:
        chunk = sock.recv(65536 if limit is None else limit - len(got))
        if not chunk:
            break
        got += chunk
    return bytes(got)


@pytest.mark.go
def test_short_bridged_streams_send_hashicorp_yamux_no_frame_after_their_end() -> None:
    from tests.gobuild import build_go, go_missing_reason

    if go_missing_reason():
        pytest.skip(str(go_missing_reason()))
    peer = build_go("yamux_rpc")
    d = tempfile.mkdtemp(prefix="ym", dir="/tmp")  # a short path: unix socket names are limited
    path = os.path.join(d, "y.sock")
    proc = subprocess.Popen([str(peer), "unix", path, str(STREAMS), str(len(REQUEST)), str(len(RESPONSE)),
                             str(PARALLEL)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    copy, serve = Workers("plugbay-test-copy"), Workers("plugbay-test-serve")
    ended = threading.Semaphore(0)  # one release per bridge that has ended (both FINs, conn closed)
    problems: list[str] = []
    session = None
    try:
        conn = dial_when_listening(proc, path)

        def answer(far: socket.socket) -> None:  # the local server of a call the peer dials in
            try:
                request = _read_all(far, len(REQUEST))
                far.sendall(RESPONSE)
                rest = _read_all(far)  # until the peer's FIN reaches us as EOF
                if request != REQUEST or rest:
                    problems.append(f"served {request!r} + {rest!r}")
            except OSError as exc:
                problems.append(f"serving: {exc}")
            finally:
                far.close()

        def route(stream: Stream) -> None:
            local, far = socket.socketpair()
            bridge(stream, local, copy, ended.release)
            serve.run(lambda: answer(far))

        def on_stream(stream: Stream) -> None:  # on the session reader: must not block
            # bridged once its first bytes are queued, as a stream whose local target takes a moment
            stream.on_first_data(lambda: route(stream))

        session = Session(conn, client=True, on_stream=on_stream, name="t-rpc")

        def call(_: int) -> bytes:  # a call dialed into the peer: response to EOF, request, close
            assert session is not None
            stream = session.open()
            spoke = threading.Event()
            # bridged once the peer's first bytes are queued, as a brokered dial whose stream the
            # peer's gRPC server speaks on before grpcio's connection reaches the bridge
            stream.on_first_data(spoke.set)
            assert spoke.wait(10), "the peer never spoke first"
            local, far = socket.socketpair()
            bridge(stream, local, copy, ended.release)
            try:
                far.sendall(REQUEST)
                return _read_all(far)
            finally:
                far.close()

        with ThreadPoolExecutor(PARALLEL, thread_name_prefix="plugbay-test-call") as pool:
            answers = list(pool.map(call, range(STREAMS)))
        assert answers == [RESPONSE] * STREAMS
        for n in range(2 * STREAMS):  # every bridge ended: what it had to send has gone out
            assert ended.acquire(timeout=30), f"{2 * STREAMS - n} bridged streams never ended"
        assert not problems, problems[:3]
        assert session.ping(10), "the peer does not answer a ping"  # it has read every frame before
        session.close()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, out + err
        report = json.loads(out.strip().splitlines()[-1])
        assert report["streams"] == 2 * STREAMS
        assert report["missing_updates"] == 0, f"window updates for streams already gone:\n{err[-2000:]}"
        # nor any other frame: a new stream's ACK the session reader had to queue goes before the
        # stream's own frames (its FIN too), never after the stream ended both ways
        assert report["missing"] == 0, f"frames for streams already gone:\n{err[-2000:]}"
        # none of these streams was sent half a window: hashicorp/yamux would return none of it
        assert report["window_updates"] == 0, report
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        if session is not None:
            session.close()
        copy.close()
        serve.close()
        shutil.rmtree(d, ignore_errors=True)


def _frames(data: bytes) -> list[tuple[int, int, int, int]]:
    """(type, flags, stream id, length) of each frame in ``data``, payloads skipped."""
    out = []
    while len(data) >= _HDR.size:
        _, kind, flags, sid, length = _HDR.unpack_from(data)
        out.append((kind, flags, sid, length))
        data = data[_HDR.size + (length if kind == DATA else 0):]
    return out


def test_a_window_update_waiting_for_the_send_lock_is_dropped_once_the_peer_has_ended_the_stream() -> None:
    # a reader returns half a window while another writer holds the send lock; the peer's FIN comes
    # meanwhile (and this side's own FIN could go before the update): once the update's turn comes,
    # the peer sends nothing more on the stream, and hashicorp/yamux may have dropped it already
    opened: list[Stream] = []
    a, b = socket.socketpair()
    session = Session(a, client=False, on_stream=opened.append, name="t-late-wu")
    size = WINDOW // 2 + 1000
    try:
        b.sendall(_HDR.pack(0, WINDOW_UPDATE, SYN, 1, 0) + _HDR.pack(0, DATA, 0, 1, size) + b"d" * size)
        assert wait_until(lambda: opened, 10)
        stream = opened[0]
        got = 0
        while got < size:
            got += len(stream.read())
        with session._wlock:  # another writer is sending: the update waits for its turn
            returning = threading.Thread(target=stream.consumed, args=(size,), name="plugbay-test-consumer",
                                         daemon=True)
            returning.start()
            assert wait_until(lambda: stream.receive_window > WINDOW, 10), "no update was ever due"
            b.sendall(_HDR.pack(0, WINDOW_UPDATE, FIN, 1, 0))
            assert stream.read() == b""  # the FIN has come
        returning.join(10)
        assert not returning.is_alive()
        stream.close_write()
        session.close()
        b.settimeout(10)
        wire = bytearray()
        while chunk := b.recv(65536):
            wire += chunk
        updates = [f for f in _frames(bytes(wire)) if f[0] == WINDOW_UPDATE and f[2] == 1 and f[3] > 0]
        assert updates == [], updates
    finally:
        session.close()
        b.close()


ROUNDS = 50  # which thread a released lock goes to next is up to the scheduler: each round is one more chance


class _RawPeer:
    """The far end of a session, frame by frame: records every frame it reads, answers pings."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.frames: list[tuple[int, int, int, int]] = []
        self._thread = threading.Thread(target=self._read, name="plugbay-test-peer", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        self.sock.settimeout(30)  # a hang guard
        data = bytearray()
        while chunk := self.sock.recv(65536):
            data += chunk
            while len(data) >= _HDR.size:
                _, kind, flags, sid, length = _HDR.unpack_from(data)
                size = _HDR.size + (length if kind == DATA else 0)
                if len(data) < size:
                    break
                del data[:size]
                self.frames.append((kind, flags, sid, length))
                if kind == PING and flags & SYN:
                    self.sock.sendall(_HDR.pack(0, PING, ACK, 0, length))

    def ended(self) -> list[tuple[int, int, int, int]]:
        """Every frame, once the session closed the connection."""
        self._thread.join(30)
        assert not self._thread.is_alive()
        return self.frames


def _open_while_the_send_lock_is_held(session: Session, opened: list[Stream], peer: _RawPeer, sid: int) -> Stream:
    """The peer opens stream ``sid`` while another writer holds the send lock: the reader, which never
    waits for that lock, queues the stream's ACK for a sender thread."""
    with session._wlock:
        had = len(opened)
        peer.sock.sendall(_HDR.pack(0, WINDOW_UPDATE, SYN, sid, 0))
        assert wait_until(lambda: len(opened) > had, 10), "the peer's stream never opened"
    return opened[-1]


@contextmanager
def _raw_session(name: str) -> Iterator[tuple[Session, list[Stream], _RawPeer]]:
    """A session on one end of a socket pair, the streams the peer opened, and the raw peer on the other."""
    opened: list[Stream] = []
    a, b = socket.socketpair()
    session = Session(a, client=True, on_stream=opened.append, name=name)
    try:
        yield session, opened, _RawPeer(b)
    finally:
        session.close()
        b.close()


def test_a_new_streams_ack_the_reader_had_to_queue_goes_out_before_the_streams_own_frames() -> None:
    # the stream's own data and FIN, sent right as the send lock is free, must follow the ACK the
    # reader queued: hashicorp/yamux drops a stream ended both ways, and takes an ACK after that
    # for a frame for a missing stream
    with _raw_session("t-late-ack") as (session, opened, peer):
        assert session.can_splice
        for k in range(ROUNDS):
            stream = _open_while_the_send_lock_is_held(session, opened, peer, 2 * (k + 1))
            if k % 2:  # as a bridge whose local side spoke: its bytes copied, or spliced from a pipe
                stream.write(b"x")
            else:
                r, w = os.pipe()
                try:
                    os.write(w, b"x")
                    stream.write_piped(r, 1)
                finally:
                    os.close(r)
                    os.close(w)
            stream.close_write()
        session.close()
        frames = peer.ended()
        for k in range(ROUNDS):
            sid = 2 * (k + 1)
            first = next(f for f in frames if f[2] == sid)
            assert first == (WINDOW_UPDATE, ACK, sid, 0), (first, [f for f in frames if f[2] == sid])


def test_a_ping_goes_out_after_the_acks_the_reader_had_to_queue() -> None:
    # its answer then tells that the peer has read them too (a caller's "every frame is out")
    with _raw_session("t-late-ping") as (session, opened, peer):
        for k in range(ROUNDS):
            _open_while_the_send_lock_is_held(session, opened, peer, 2 * (k + 1))
            assert session.ping(10), "the peer does not answer a ping"
        session.close()
        frames = peer.ended()
        pings = [i for i, f in enumerate(frames) if f[0] == PING]
        assert len(pings) == ROUNDS
        for k, at in enumerate(pings):
            sid = 2 * (k + 1)
            assert (WINDOW_UPDATE, ACK, sid, 0) in frames[:at], (k, frames[max(0, at - 3):at + 1])


def test_a_closing_session_sends_the_acks_the_reader_had_to_queue_before_its_go_away() -> None:
    for _ in range(ROUNDS // 5):  # a session ends once: a fresh one for every chance
        with _raw_session("t-late-close") as (session, opened, peer):
            _open_while_the_send_lock_is_held(session, opened, peer, 2)
            session.close()
            frames = peer.ended()
            assert frames == [(WINDOW_UPDATE, ACK, 2, 0), (GO_AWAY, 0, 0, 0)], frames
