"""A bulk peer's payloads reach a stream's reader without extra copies or fresh buffers."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from tests.resilience_util import wait_until

from plugbay.core.transport.frames import FrameReader
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


def test_refill_buffers_are_reused_once_their_payloads_are_gone() -> None:
    # the buffer of each refill was new (zero-filled, page faults) while a payload of the last one
    # was still held: a stream's reader holds one while the next frames arrive
    ours, theirs = socket.socketpair()
    ours.settimeout(10)  # a send that finds no room fails, never hangs (each step's bytes are read before the next)
    theirs.settimeout(10)
    try:
        reader = FrameReader(theirs, b"")
        held: list[memoryview] = []
        buffers = []
        for i in range(1, 17):
            payload = bytes([i]) * _BIG
            ours.sendall(b"h" + payload)  # a header's byte first: the payload comes in a refill
            assert reader.read(1) == b"h"
            got = reader.read(_BIG)
            assert isinstance(got, memoryview) and got == payload
            buffers.append(got.obj)
            held.append(got)
            if len(held) > 2:  # the stream's reader has handed the older ones on
                held.pop(0)
            # a buffer reused too soon would overwrite what the reader still holds
            assert all(view == bytes([i - k]) * _BIG for k, view in enumerate(reversed(held))), \
                "a held payload was overwritten by a later refill"
        # at most frames._KEPT (4) buffers: on a socketpair each refill takes the whole step
        assert len({id(b) for b in buffers}) <= 4, "a fresh refill buffer while an earlier one was free"
    finally:
        ours.close()
        theirs.close()
