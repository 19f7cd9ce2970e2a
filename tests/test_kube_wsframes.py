"""The port-forwarder's WebSocket frames against the stand-in's own, independently written codec."""

from __future__ import annotations

import struct

import pytest

from plugbay.runners.kubernetes.wsframes import (
    OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, FrameError, FrameReader, client_frame,
)
from tests.kube_standin import portforward as server


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_client_frames_are_masked_and_read_by_the_server(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    data = client_frame(OP_BINARY, b"\x00" + payload)
    assert data[1] & 0x80  # RFC 6455 5.3: every client frame is masked
    reader = server.FrameReader()
    assert reader.feed(data) == [(OP_BINARY, b"\x00" + payload)]


def test_server_frames_split_anywhere_and_fragmented() -> None:
    stream = (server.frame(OP_BINARY, b"\x00" + struct.pack("<H", 4000))
              + bytes([0x00 | OP_BINARY, 3]) + b"\x00ab"  # first fragment (FIN clear)
              + server.frame(OP_PING, b"hi")  # a control frame between fragments
              + bytes([0x80 | OP_CONT, 2]) + b"cd"
              + server.frame(OP_BINARY, b"\x00" + b"x" * 70_000)
              + server.frame(OP_CLOSE, struct.pack(">H", 1000)))
    reader = FrameReader()
    out = []
    for i in range(0, len(stream), 7):  # as TCP may deliver it: in arbitrary pieces
        out += reader.feed(stream[i:i + 7])
    assert out == [(OP_BINARY, b"\x00\xa0\x0f"), (OP_PING, b"hi"), (OP_BINARY, b"\x00abcd"),
                   (OP_BINARY, b"\x00" + b"x" * 70_000), (OP_CLOSE, b"\x03\xe8")]


def test_a_continuation_without_a_message_is_an_error() -> None:
    with pytest.raises(FrameError, match="continuation"):
        FrameReader().feed(bytes([0x80 | OP_CONT, 1]) + b"x")


def test_an_absurd_frame_length_is_an_error() -> None:
    with pytest.raises(FrameError, match="frame"):
        FrameReader().feed(bytes([0x80 | OP_BINARY, 127]) + struct.pack(">Q", 1 << 40))
