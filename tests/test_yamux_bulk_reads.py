"""A bulk peer's payloads reach a stream's reader without extra copies or fresh buffers."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from tests.resilience_util import wait_until

from plugbay.core.transport.yamux import DATA, SYN, WINDOW, WINDOW_UPDATE, Session, Stream

_HDR = struct.Struct(">BBHII")
_BIG = 64 * 1024  # a frame of hashicorp/yamux writing 64 KiB at a time


@pytest.fixture
def accepted() -> Iterator[tuple[socket.socket, list[Stream]]]:
    ours, theirs = socket.socketpair()
    streams: list[Stream] = []
    session = Session(theirs, client=False, on_stream=streams.append, name="t-bulk")
    try:
        yield ours, streams
    finally:
        session.close()
        ours.close()


def test_large_payloads_queued_together_are_read_one_by_one_not_joined(
        accepted: tuple[socket.socket, list[Stream]]) -> None:
    # joining them copied every byte of a bulk stream once more, into a buffer made for it
    peer, streams = accepted
    first, second = bytes([1]) * _BIG, bytes([2]) * _BIG
    peer.sendall(_HDR.pack(0, WINDOW_UPDATE, SYN, 1, 0) + b"".join(_HDR.pack(0, DATA, 0, 1, _BIG) + p
                                                                   for p in (first, second)))
    assert wait_until(lambda: len(streams) == 1 and streams[0].receive_window == WINDOW - 2 * _BIG, 10)
    stream = streams[0]
    assert bytes(stream.read()) == first
    assert bytes(stream.read()) == second

