"""Small helpers of the yamux tests: reading a stream to a length, a session fed raw frames."""

from __future__ import annotations

import socket

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
