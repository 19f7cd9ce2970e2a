"""The RFC 6455 frames a port-forward stream needs: masked client frames out, server frames in.

The port-forwarder relays each connection's bytes straight between its TCP
socket and the WebSocket's socket in one thread, so it frames and parses here
itself instead of going through the kubernetes client's proxy thread and the
socket pair that proxy adds (one thread hop and two copies per direction).
"""

from __future__ import annotations

import os
import struct

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
_FIN_BINARY = 0x80 | OP_BINARY
MAX_FRAME = 64 << 20  # a server frame larger than this is a broken stream, not data


class FrameError(Exception):
    """The server sent something that is not a WebSocket frame (the stream must end)."""


class MaskKeys:
    """Masking keys from the OS's strong random source (RFC 6455 10.3), read 4 KiB at a time.

    One getrandom() per 1,024 frames instead of one per frame; each key is still
    fresh urandom bytes that no earlier frame reveals.
    """

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def take(self) -> bytes:
        at = self._at
        if at + 4 > len(self._pool):
            self._pool, at = os.urandom(4096), 0
        self._at = at + 4
        return self._pool[at:at + 4]


def client_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One final frame, masked as RFC 6455 5.3 requires of every client frame.

    ``mask``: the 4-byte key (MaskKeys.take()); a fresh os.urandom(4) when None.
    """
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    if mask is None:
        mask = os.urandom(4)
    return head + mask + _xor(payload, mask)


def _xor(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class FrameReader:
    """Incremental parser of server frames; continuations are joined into one message."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._partial: bytearray | None = None
        self._partial_op = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Whole messages (opcode, payload) completed by ``data``; the rest waits for more."""
        buf = self._buf
        if not buf and self._partial is None and len(data) >= 2 and data[0] == _FIN_BINARY:
            # the relay's usual read: exactly one final, unmasked binary frame (RSV bits clear):
            # its payload is sliced out once instead of going through the buffer
            n, at = data[1], 2  # the mask bit is the length byte's top bit: a masked frame is >= 128 here
            if n == 126 and len(data) >= 4:
                n, at = (data[2] << 8) | data[3], 4
            elif n > 126:
                n = -1  # masked, or a 64-bit length: the general path below
            if len(data) == at + n:
                return [(OP_BINARY, bytes(data[at:]))]
        buf += data
        out: list[tuple[int, bytes]] = []
        pos = 0
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n, at = b1 & 0x7F, pos + 2
            if n == 126:
                if len(buf) - at < 2:
                    break
                (n,), at = struct.unpack_from("!H", buf, at), at + 2
            elif n == 127:
                if len(buf) - at < 8:
                    break
                (n,), at = struct.unpack_from("!Q", buf, at), at + 8
            if n > MAX_FRAME:
                raise FrameError(f"a {n}-byte frame")
            mask = b""
            if b1 & 0x80:  # servers must not mask, but a masked frame is still readable
                if len(buf) - at < 4:
                    break
                mask, at = bytes(buf[at:at + 4]), at + 4
            if len(buf) - at < n:
                break
            payload = bytes(buf[at:at + n])
            pos = at + n
            if mask:
                payload = _xor(payload, mask)
            if b0 & 0x70:  # no extension was negotiated
                raise FrameError("a frame with reserved bits set")
            self._add(b0 & 0x80 != 0, b0 & 0x0F, payload, out)
        del buf[:pos]
        return out

    def _add(self, fin: bool, opcode: int, payload: bytes, out: list[tuple[int, bytes]]) -> None:
        if opcode >= OP_CLOSE:  # control frames may sit between a message's fragments
            if opcode not in (OP_CLOSE, OP_PING, OP_PONG) or not fin or len(payload) > 125:
                raise FrameError(f"a bad control frame (opcode {opcode}, fin {fin}, {len(payload)} bytes)")
            out.append((opcode, payload))
        elif opcode == OP_CONT:
            if self._partial is None:
                raise FrameError("a continuation frame with no message to continue")
            if len(self._partial) + len(payload) > MAX_FRAME:  # fragments must not outgrow one frame
                raise FrameError(f"a fragmented message over {MAX_FRAME} bytes")
            self._partial += payload
            if fin:
                out.append((self._partial_op, bytes(self._partial)))
                self._partial = None
        elif opcode not in (OP_TEXT, OP_BINARY):
            raise FrameError(f"an unknown opcode {opcode}")
        elif self._partial is not None:
            raise FrameError("a new message before the fragmented one ended")
        elif fin:
            out.append((opcode, payload))
        else:
            self._partial, self._partial_op = bytearray(payload), opcode
