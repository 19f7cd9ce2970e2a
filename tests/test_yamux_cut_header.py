"""A control frame the session reader sends, cut inside its header by a full TCP buffer: the rest waits
for a peer that has stopped reading, and the reader must not wait with it (it would read nothing more).

The kernel cuts the header here, not a stand-in: the session's TCP socket is left with its send buffer
over its limit and room for exactly 5 more bytes in the segment it is filling, so a 12-byte header
sent without waiting gets 5 bytes out, as it can at any time on a busy TCP connection.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from plugbay.core.transport.ystream import _HDR, ACK, DATA, PING, SYN, WINDOW_UPDATE
from plugbay.core.transport.yamux import Session, Stream

_ROOM = 5  # bytes of the reader's next header that fit


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # the accepted end's, before the handshake
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        ours = socket.create_connection(listener.getsockname(), timeout=10)
        ours.settimeout(None)
        ours.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the mux dialers set it
        listener.settimeout(10)
        peer, _ = listener.accept()
    return ours, peer


def _send_now(sock: socket.socket, data: bytes, flags: int = 0) -> int:
    try:
        return sock.send(data, socket.MSG_DONTWAIT | flags)
    except BlockingIOError:
        return 0


def _leave_room_for(sock: socket.socket, room: int) -> int:
    """Fill ``sock`` (its peer not reading) so that its next send gets ``room`` bytes out: the bytes
    sent. A segment is filled up to a size the kernel picks; it is measured first."""
    junk = b"j" * 65536
    sent = 0
    for _ in range(2):  # past the peer's window, then what its window update let out meanwhile
        while n := _send_now(sock, junk):
            sent += n
        time.sleep(0.2)

    def segment_of(size: int) -> int:
        # one more segment (the last one ended by MSG_EOR is never added to), then no room for another
        nonlocal sent
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        sent += _send_now(sock, b"e", socket.MSG_EOR)
        got = _send_now(sock, b"s" * size)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sent += got
        return got

    assert segment_of(1000) == 1000
    left = _send_now(sock, b"f" * (1 << 20))  # what that segment still takes: then it is full
    sent += left
    goal = 1000 + left
    for last in (False, True):  # a rehearsal first: the kernel must cut a 12-byte send as measured
        assert segment_of(goal - room) == goal - room
        if last:
            break
        probe = _send_now(sock, b"p" * 12)
        sent += probe
        if probe != room:
            pytest.skip(f"this kernel does not fill a segment as measured ({probe} of 12 bytes, not {room})")
    return sent


def _receive(sock: socket.socket, n: int) -> bytes:
    sock.settimeout(10)
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(min(n - len(out), 1 << 20))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def test_a_ping_answer_cut_by_a_full_tcp_buffer_does_not_stop_the_reader() -> None:
    ours, peer = _tcp_pair()
    streams: list[Stream] = []
    opened = threading.Event()
    session = Session(ours, client=True, on_stream=lambda s: (streams.append(s), opened.set()), name="t-cut")
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(bytes(streams[0].read())), name="plugbay-test-read",
                              daemon=True)
    try:
        peer.sendall(_HDR.pack(0, WINDOW_UPDATE, SYN, 2, 0))
        assert opened.wait(10)
        filler = _leave_room_for(ours, _ROOM)
        # the peer still does not read: its ping's answer gets 5 bytes out, then its data follows
        peer.sendall(_HDR.pack(0, PING, SYN, 0, 7) + _HDR.pack(0, DATA, 0, 2, 5) + b"hello")
        reader.start()
        reader.join(5)
        assert got == [b"hello"], ("the session stopped reading: its reader waits to send the rest of"
                                   " a ping's answer to a peer that does not read")
        # once the peer reads again, the answer's rest follows its first 5 bytes, and nothing else
        # came in between
        wire = _receive(peer, 12 + filler + 12)
        assert wire[:12] == _HDR.pack(0, WINDOW_UPDATE, ACK, 2, 0)
        assert len(wire) == 12 + filler + 12
        assert wire[-12:] == _HDR.pack(0, PING, ACK, 0, 7)
        peer.sendall(struct.pack(">BBHII", 0, PING, SYN, 0, 8))  # the session still answers
        assert _receive(peer, 12) == _HDR.pack(0, PING, ACK, 0, 8)
    finally:
        session.abort("test over")
        if reader.ident is not None:
            reader.join(10)
        peer.close()
    assert not reader.is_alive()
