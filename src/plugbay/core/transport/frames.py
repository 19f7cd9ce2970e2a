"""Moving yamux frames through a socket with few copies and few system calls (for yamux.Session)."""

from __future__ import annotations

import socket

_READ = 256 * 1024  # a session reader's buffer refill
_DIRECT = 64 * 1024  # payloads this big are received straight into their own buffer


class FrameReader:
    """Reads exactly n bytes off the session's socket (fewer only at its end).

    Small reads (headers, small frames) come out of a buffer filled by large
    recv calls; a large payload is received straight into its own buffer in
    one call (MSG_WAITALL): one release of the GIL per frame, one copy.
    """

    def __init__(self, sock: socket.socket, first: bytes) -> None:
        self._sock = sock
        self._buf = bytearray(first)
        self._chunk = memoryview(bytearray(_READ))  # reused: no large allocation per recv

    def read(self, n: int) -> bytes | bytearray:
        buf = self._buf
        while len(buf) < n:
            if n - len(buf) >= _DIRECT:
                return self._read_direct(n)
            got = self._sock.recv_into(self._chunk)
            if not got:
                break
            buf += self._chunk[:got]
        data = bytes(buf[:n])
        del buf[:n]
        return data

    def _read_direct(self, n: int) -> bytearray:
        out = bytearray(n)
        have = len(self._buf)
        out[:have] = self._buf
        self._buf.clear()
        with memoryview(out) as view:
            while have < n:
                got = self._sock.recv_into(view[have:], n - have, socket.MSG_WAITALL)
                if not got:
                    break
                have += got
        del out[have:]  # the connection ended inside the payload: the caller sees it short
        return out


def send_all(sock: socket.socket, header: bytes, payload: memoryview) -> None:
    """Header and payload in one system call where the socket takes them (no copy into one buffer)."""
    sent = sock.sendmsg([header, payload])
    if sent < len(header):
        sock.sendall(header[sent:])
        sent = len(header)
    if sent - len(header) < len(payload):
        sock.sendall(payload[sent - len(header):])
