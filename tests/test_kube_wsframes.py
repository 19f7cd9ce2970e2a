"""The port-forwarder's WebSocket frames against the stand-in's own, independently written codec."""

from __future__ import annotations

import struct

import pytest

from plugbay.runners.kubernetes.wsframes import (
    OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, FrameError, FrameReader, MaskKeys, client_frame,
)
from tests.kube_standin import portforward as server


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_client_frames_are_masked_and_read_by_the_server(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    data = client_frame(OP_BINARY, b"\x00" + payload)
    assert data[1] & 0x80  # RFC 6455 5.3: every client frame is masked
    reader = server.FrameReader()
    assert reader.feed(data) == [(OP_BINARY, b"\x00" + payload)]


def test_pooled_masking_keys_are_fresh_and_frames_with_them_read_back() -> None:
    keys = MaskKeys()
    taken = [keys.take() for _ in range(3000)]  # crosses two refills of the 4 KiB pool
    assert all(len(k) == 4 for k in taken)
    assert len(set(taken)) > 2990  # random 32-bit keys: a handful of repeats at most, never a fixed key
    payload = b"\x00" + bytes(range(200))
    for key in taken[1020:1030]:  # around the first refill
        data = client_frame(OP_BINARY, payload, key)
        assert data[4:8] == key and data[8:] != payload  # RFC 6455 5.3: the key is sent and applied
        assert server.FrameReader().feed(data) == [(OP_BINARY, payload)]


@pytest.mark.parametrize("size", [0, 1, 124, 125, 126, 65535, 65536])
def test_one_whole_frame_per_read_gives_its_payload_as_the_general_path_does(size: int) -> None:
    payload = bytes(i % 253 for i in range(size))
    whole = server.frame(OP_BINARY, payload)
    assert FrameReader().feed(whole) == [(OP_BINARY, payload)]
    split = FrameReader()  # the same bytes in two reads take the buffered path
    assert split.feed(whole[:1]) == [] and split.feed(whole[1:]) == [(OP_BINARY, payload)]
    reader = FrameReader()  # a frame plus the start of the next: the first whole, the rest kept
    assert reader.feed(whole + whole[:1]) == [(OP_BINARY, payload)]
    assert reader.feed(whole[1:]) == [(OP_BINARY, payload)]
    masked = client_frame(OP_BINARY, payload)  # a masked frame is still read (and unmasked)
    assert FrameReader().feed(masked) == [(OP_BINARY, payload)]


def test_a_whole_binary_frame_inside_a_fragmented_message_is_still_an_error() -> None:
    reader = FrameReader()
    assert reader.feed(bytes([OP_BINARY, 1]) + b"a") == []  # a first fragment (FIN clear)
    with pytest.raises(FrameError, match="before the fragmented one ended"):
        reader.feed(server.frame(OP_BINARY, b"b"))


def test_the_stand_ins_reader_takes_whole_masked_frames_of_any_size() -> None:
    for size in (0, 1, 121, 125, 126, 70_000):
        payload = bytes(i % 249 for i in range(size))
        assert server.FrameReader().feed(client_frame(OP_BINARY, payload)) == [(OP_BINARY, payload)]


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


def test_continuations_cannot_grow_a_message_past_one_frames_limit() -> None:
    from plugbay.runners.kubernetes.wsframes import MAX_FRAME

    piece = b"x" * (1 << 20)
    reader = FrameReader()
    reader.feed(bytes([OP_BINARY, 127]) + struct.pack(">Q", len(piece)) + piece)  # FIN clear
    with pytest.raises(FrameError, match="fragmented message"):
        for _ in range(MAX_FRAME // len(piece) + 1):
            reader.feed(bytes([OP_CONT, 127]) + struct.pack(">Q", len(piece)) + piece)


@pytest.mark.parametrize("frame, why", [
    (bytes([0x80 | OP_PING, 126]) + struct.pack(">H", 126) + b"p" * 126, "control frame"),
    (bytes([OP_PING, 1]) + b"p", "control frame"),  # a control frame without FIN
    (bytes([0x80 | 3, 1]) + b"?", "unknown opcode"),
    (bytes([0x80 | 0x40 | OP_BINARY, 1]) + b"r", "reserved bits"),
])
def test_bad_frames_from_the_peer_are_errors(frame: bytes, why: str) -> None:
    with pytest.raises(FrameError, match=why):
        FrameReader().feed(frame)


def test_a_new_message_inside_a_fragmented_one_is_an_error() -> None:
    with pytest.raises(FrameError, match="before the fragmented one ended"):
        FrameReader().feed(bytes([OP_BINARY, 1]) + b"a" + bytes([0x80 | OP_BINARY, 1]) + b"b")


def test_the_rfc_6455_masked_hello_example_reads_as_hello() -> None:
    """RFC 6455 section 5.7: an independent check of the unmasking (server side and ours)."""
    example = bytes.fromhex("818537fa213d7f9f4d5158")
    assert server.FrameReader().feed(example) == [(0x1, b"Hello")]
    assert FrameReader().feed(example) == [(0x1, b"Hello")]
