"""The pods/portforward WebSocket endpoint (the v4.channel.k8s.io protocol).

Per requested port i the stand-in opens two channels: 2*i carries data both
ways, 2*i+1 carries error text from the server. The first frame on each channel
is the channel byte plus the port number as 2 bytes, little endian. Every
later binary frame is the channel byte plus payload. The data channel is
relayed to the container's port published on 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Sequence

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PROTOCOL = "v4.channel.k8s.io"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
CLOSE_WAIT = 2.0  # how long a server-side close waits for the client's Close


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def frame(opcode: int, payload: bytes) -> bytes:
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack(">H", n)
    else:
        head += bytes([127]) + struct.pack(">Q", n)
    return head + payload


class FrameReader:
    """Incremental parser of (masked) client frames."""

    def __init__(self) -> None:
        self.buf = b""
        self._partial: bytes | None = None
        self._partial_op = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if not self.buf and self._partial is None and len(data) > 6 and data[0] == 0x80 | OP_BINARY \
                and 0x80 < data[1] < 0x80 | 126 and len(data) == 6 + (data[1] & 0x7F):
            # the usual read: one whole final masked binary frame under 126 bytes; unmasked at once so
            # the stand-in's own cost per relayed frame stays small next to the client's it measures
            n = len(data) - 6
            key = (data[2:6] * (n // 4 + 1))[:n]
            return [(OP_BINARY, (int.from_bytes(data[6:], "little") ^ int.from_bytes(key, "little"))
                     .to_bytes(n, "little"))]
        self.buf += data
        out: list[tuple[int, bytes]] = []
        while True:
            if len(self.buf) < 2:
                return out
            b0, b1 = self.buf[0], self.buf[1]
            fin, opcode, masked, n = b0 & 0x80, b0 & 0x0F, b1 & 0x80, b1 & 0x7F
            pos = 2
            if n == 126:
                if len(self.buf) < 4:
                    return out
                n = struct.unpack(">H", self.buf[2:4])[0]
                pos = 4
            elif n == 127:
                if len(self.buf) < 10:
                    return out
                n = struct.unpack(">Q", self.buf[2:10])[0]
                pos = 10
            mask = b""
            if masked:
                if len(self.buf) < pos + 4:
                    return out
                mask = self.buf[pos:pos + 4]
                pos += 4
            if len(self.buf) < pos + n:
                return out
            payload = self.buf[pos:pos + n]
            self.buf = self.buf[pos + n:]
            if mask and payload:
                key = (mask * (n // 4 + 1))[:n]
                payload = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")
            if opcode == OP_CONT and self._partial is not None:
                self._partial += payload
                if fin:
                    out.append((self._partial_op, self._partial))
                    self._partial = None
                continue
            if not fin:
                self._partial, self._partial_op = payload, opcode
                continue
            out.append((opcode, payload))


class ForwardSession:
    """One port-forward WebSocket: relays each requested port to 127.0.0.1:<published>."""

    def __init__(self, sock: socket.socket, pod_key: str, ports: Sequence[int],
                 targets: dict[int, int]) -> None:
        self.sock = sock
        self.pod_key = pod_key
        self.ports = list(ports)
        self.targets = targets
        self.dropped = threading.Event()
        self.drop_on_data = False
        self.error_text: str | None = None  # set: said on the first port's error channel, instead of relaying
        self._reader = FrameReader()
        self._peer_closed = False

    def drop(self) -> None:
        """Fault injection: cut the stream as an API server restart or network blip would."""
        self.dropped.set()

    def _recv(self) -> bytes:
        """What the socket has; in TLS mode also what OpenSSL already decrypted (select cannot see it)."""
        data = self.sock.recv(65536)
        while isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            data += self.sock.recv(self.sock.pending())
        return data

    def _send(self, opcode: int, payload: bytes) -> None:
        self.sock.sendall(frame(opcode, payload))

    def run(self, stop: threading.Event) -> None:
        conns: dict[int, socket.socket] = {}
        try:
            # Go's net package (the API server, the kubelet) sets TCP_NODELAY on every TCP
            # connection; without it our frames wait on the peer's delayed ACK (~40 ms).
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i, port in enumerate(self.ports):
                header = struct.pack("<H", port)
                self._send(OP_BINARY, bytes([2 * i]) + header)
                self._send(OP_BINARY, bytes([2 * i + 1]) + header)
            if self.error_text is not None and self.ports:
                self._send(OP_BINARY, b"\x01" + self.error_text.encode())
                return
            for i, port in enumerate(self.ports):
                target = self.targets.get(port)
                try:
                    if target is None:
                        raise ConnectionRefusedError("port not published")
                    conns[i] = socket.create_connection(("127.0.0.1", target), timeout=5)
                    conns[i].settimeout(None)
                    conns[i].setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError as exc:
                    msg = (f"error forwarding port {port} to pod {self.pod_key}: failed to connect"
                           f" to localhost:{port} inside namespace: {exc}")
                    self._send(OP_BINARY, bytes([2 * i + 1]) + msg.encode())
                    return
            self._relay(conns, stop)
        except OSError:
            pass
        finally:
            for c in conns.values():
                c.close()
            try:
                if not self.dropped.is_set():
                    self._send(OP_CLOSE, struct.pack(">H", 1000))
                    if not self._peer_closed:
                        # RFC 6455 7.1.1: the server closes TCP only after the client's
                        # Close. Closing at once makes the kernel answer the client's
                        # in-flight frames with a reset, and the client's proxy thread
                        # then dies on EPIPE replying to our Close.
                        self._await_peer_close(CLOSE_WAIT)
            except OSError:
                pass
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _await_peer_close(self, timeout: float) -> None:
        """Discard frames until the client's Close or EOF, for at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            readable = _readable([self.sock], left)
            if not readable:
                return
            data = self._recv()
            if not data or any(op == OP_CLOSE for op, _ in self._reader.feed(data)):
                return

    def _relay(self, conns: dict[int, socket.socket], stop: threading.Event) -> None:
        reader = self._reader
        sock = self.sock
        api = sock.fileno()
        by_fd = {c.fileno(): (i, c) for i, c in conns.items()}
        # one poll object for the session's life, as a Go relay keeps its goroutines: building and
        # registering one per wake-up was the stand-in's largest cost per relayed frame
        poller = select.poll()
        for fd in (api, *by_fd):
            poller.register(fd, select.POLLIN)
        stopped, dropped = stop.is_set, self.dropped.is_set
        while not stopped() and not dropped():
            for fd, _ in poller.poll(200):
                if fd == api:
                    data = self._recv()  # with what OpenSSL already decrypted: poll cannot see it
                    if not data:
                        return
                    out: dict[int, list[bytes]] = {}  # per port, this read's bytes: one sendall each
                    try:
                        for opcode, payload in reader.feed(data):
                            if opcode == OP_CLOSE:
                                self._peer_closed = True
                                return
                            if opcode == OP_PING:
                                self._send(OP_PONG, payload)
                            elif opcode == OP_BINARY and payload:
                                if self.drop_on_data:
                                    self.dropped.set()
                                    return
                                chan = payload[0]
                                if chan % 2 == 0 and chan // 2 in conns:
                                    out.setdefault(chan // 2, []).append(payload[1:])
                    finally:
                        if not dropped():
                            for i, parts in out.items():
                                conns[i].sendall(parts[0] if len(parts) == 1 else b"".join(parts))
                    continue
                i, conn = by_fd[fd]
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    return  # the pod side closed: end the stream like the kubelet does
                n = len(data) + 1
                if n < 126:  # one header build and one copy for the usual small answer
                    sock.sendall(bytes((0x80 | OP_BINARY, n, 2 * i)) + data)
                else:
                    self._send(OP_BINARY, bytes([2 * i]) + data)


def _readable(socks: list[socket.socket], timeout: float) -> list[socket.socket]:
    """Which of ``socks`` are readable: poll, as select.select() refuses descriptors past 1023 (a test's host
    may hold that many)."""
    poller = select.poll()
    by_fd = {}
    for sock in socks:
        poller.register(sock, select.POLLIN)
        by_fd[sock.fileno()] = sock
    return [by_fd[fd] for fd, _ in poller.poll(max(timeout, 0) * 1000)]
