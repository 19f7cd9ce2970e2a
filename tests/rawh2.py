"""A raw HTTP/2 gRPC client: one streaming call whose responses it never lets the server send.

It speaks just enough HTTP/2 (the preface, SETTINGS with an initial stream window of 0,
a HEADERS frame of literal HPACK fields, DATA within the server's windows, the ACKs of
the server's SETTINGS and PINGs) to start a call and send request messages, while
granting the server no window for the responses: what a peer that never reads does to
a server that answers each request (tests/test_knock_flood.py).
"""

from __future__ import annotations

import socket
import struct
import threading

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 4, 6, 7, 8
END_HEADERS, ACK = 0x4, 0x1
INITIAL_WINDOW_SIZE = 0x4
_STREAM = 1


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", sid) + payload


def _literal(name: str, value: str) -> bytes:
    # "literal header field without indexing, new name", no Huffman (both shorter than 127 bytes)
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


class RawCall:
    """A streaming gRPC call to ``path`` over ``sock``; send() writes a request (a serialized message)."""

    def __init__(self, sock: socket.socket, path: str) -> None:
        self._sock = sock
        self._cond = threading.Condition()
        self._conn_window = 65535  # the server's, for what this side sends
        self._stream_window = 65535
        self.goaway = False
        self.closed = False
        self.received = 0  # response DATA bytes the server sent (none while it grants no window)
        sock.sendall(PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HI", INITIAL_WINDOW_SIZE, 0)))
        fields = b"".join(_literal(n, v) for n, v in (
            (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "localhost"),
            ("content-type", "application/grpc"), ("te", "trailers")))
        sock.sendall(frame(HEADERS, END_HEADERS, _STREAM, fields))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        data = b""
        try:
            while True:
                chunk = self._sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                while len(data) >= 9:
                    length = int.from_bytes(data[:3], "big")
                    if len(data) < 9 + length:
                        break
                    kind, flags, sid = data[3], data[4], int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
                    payload, data = data[9:9 + length], data[9 + length:]
                    self._frame(kind, flags, sid, payload)
        except OSError:
            pass
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        with self._cond:
            if kind == SETTINGS and not flags & ACK:
                for i in range(0, len(payload), 6):
                    key, value = struct.unpack(">HI", payload[i:i + 6])
                    if key == INITIAL_WINDOW_SIZE:
                        self._stream_window += value - 65535
                self._sock.sendall(frame(SETTINGS, ACK, 0))
            elif kind == PING and not flags & ACK:
                self._sock.sendall(frame(PING, ACK, 0, payload))
            elif kind == WINDOW_UPDATE:
                delta = int.from_bytes(payload, "big") & 0x7FFFFFFF
                if sid == 0:
                    self._conn_window += delta
                elif sid == _STREAM:
                    self._stream_window += delta
            elif kind == DATA:
                self.received += len(payload)
            elif kind == GOAWAY:
                self.goaway = True
            self._cond.notify_all()

    def send(self, message: bytes, timeout: float = 10.0) -> bool:
        """Write one request; False if the connection ended (or no window came within ``timeout``)."""
        body = b"\x00" + struct.pack(">I", len(message)) + message
        with self._cond:
            if not self._cond.wait_for(lambda: self.closed or self.goaway or (
                    self._conn_window >= len(body) and self._stream_window >= len(body)), timeout):
                return False
            if self.closed or self.goaway:
                return False
            self._conn_window -= len(body)
            self._stream_window -= len(body)
            try:
                self._sock.sendall(frame(DATA, 0, _STREAM, body))
            except OSError:
                return False
        return True
