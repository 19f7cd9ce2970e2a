"""A raw HTTP/2 peer over mutual TLS that opens gRPC streams and never sends their request message.

What one peer with a valid client certificate can do to a network plugin with a single
connection (tests/test_network_slow_requests.py): it answers the server's SETTINGS and PINGs,
so the connection stays healthy, while its streams wait for requests that never come.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import grpc

from tests import netcerts

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0, 1, 3, 4, 6, 7
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
MAX_CONCURRENT_STREAMS = 3  # the SETTINGS parameter


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _literal(name: str, value: str) -> bytes:
    """An HPACK literal header field without indexing, no Huffman coding (short names and values)."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def request_headers(path: str) -> bytes:
    return b"".join(_literal(name, value) for name, value in (
        (":method", "POST"), (":scheme", "https"), (":path", path), (":authority", "localhost"),
        ("content-type", "application/grpc"), ("te", "trailers")))


class TLSPipe:
    """A TLS client connection whose reads (one thread) and writes (any thread) never meet in OpenSSL.

    An ssl.SSLSocket read on one thread and written on another calls SSL_read and SSL_write on one SSL
    object at once, which OpenSSL does not allow: now and then a record went out corrupted and the server
    (grpc: "Decryption error: TSI_DATA_CORRUPTED") closed the connection under a test. Here the TLS state
    is an SSLObject over memory buffers, used under one lock only to encrypt or decrypt; the socket's
    own reads and writes need no lock between them."""

    def __init__(self, address: str, context: ssl.SSLContext, source: str | None = None) -> None:
        host, _, port = address.rpartition(":")
        self._raw = socket.create_connection((host, int(port)), timeout=10,
                                             source_address=(source, 0) if source else None)
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_hostname="localhost")
        self._tls_lock = threading.Lock()  # the SSLObject: encrypt, decrypt
        self._send_lock = threading.Lock()  # records leave in the order they were made
        self._ended = False
        self._error: ssl.SSLError | None = None
        try:
            for _ in range(100):  # a handshake takes two or three round trips
                try:
                    self._obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    self._raw.sendall(self._out.read())
                    chunk = self._raw.recv(65536)
                    if not chunk:
                        raise ConnectionError("the server closed the connection during the TLS handshake")
                    self._in.write(chunk)
            else:
                raise AssertionError("the TLS handshake did not finish")
            self._raw.sendall(self._out.read())
        except BaseException:
            self._raw.close()
            raise
        self._raw.settimeout(None)

    def send(self, data: bytes) -> None:
        with self._send_lock:
            with self._tls_lock:
                if data:
                    self._obj.write(data)
                records = self._out.read()
            if records:
                self._raw.sendall(records)

    def recv(self) -> bytes:
        """The next plaintext the server sent; b"" once the connection ended (its close_notify, or the
        socket's end). A TLS error (an alert) is raised, after any plaintext that came before it."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        while not self._ended:
            chunk = self._raw.recv(65536)
            with self._tls_lock:
                if chunk:
                    self._in.write(chunk)
                else:
                    self._in.write_eof()
                out = b""
                try:
                    while piece := self._obj.read(65536):
                        out += piece
                    self._ended = True  # b"" from read: the server's close_notify
                except ssl.SSLWantReadError:
                    pass
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    self._ended = True
                except ssl.SSLError as exc:
                    if not out:
                        raise
                    self._error = exc  # the plaintext first, the alert at the next call
                pending = self._out.pending  # a post-handshake answer (key update)
            if pending:
                self.send(b"")
            if out:
                return out
            if not chunk:
                self._ended = True
        return b""

    def shutdown(self) -> None:
        try:
            self._raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self._raw.close()


class StallingPeer:
    """One TLS connection speaking HTTP/2: ``open_streams`` sends HEADERS only (no DATA, no END_STREAM).

    ``source``: the local address to connect from (127.0.0.2: another peer address than 127.0.0.1's)."""

    def __init__(self, address: str, certs: netcerts.CertSet, source: str | None = None) -> None:
        context = netcerts.client_context(certs)
        context.set_alpn_protocols(["h2"])
        self._tls = TLSPipe(address, context, source)
        self._cond = threading.Condition()
        self.settings: dict[int, int] = {}
        self.resets = 0
        self.pongs = 0
        self.closed = False
        self.answered: set[int] = set()  # streams the server sent HEADERS on (an answer, or a refusal)
        self._next = 1
        self._send(PREFACE + frame(SETTINGS, 0, 0))
        self._reader = threading.Thread(target=self._read, name="plugbay-test-h2peer", daemon=True)
        self._reader.start()

    def _send(self, data: bytes) -> None:
        self._tls.send(data)

    def _read(self) -> None:
        data = b""
        try:
            while chunk := self._tls.recv():
                data += chunk
                while len(data) >= 9:
                    length = int.from_bytes(data[:3], "big")
                    if len(data) < 9 + length:
                        break
                    kind, flags, stream = data[3], data[4], int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
                    payload, data = data[9:9 + length], data[9 + length:]
                    if kind == HEADERS:
                        with self._cond:
                            self.answered.add(stream)
                            self._cond.notify_all()
                    self._on_frame(kind, flags, payload)
        except (OSError, ssl.SSLError):
            pass
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def _on_frame(self, kind: int, flags: int, payload: bytes) -> None:
        if kind == SETTINGS and not flags & ACK:
            with self._cond:
                for i in range(0, len(payload), 6):
                    key, value = struct.unpack(">HI", payload[i:i + 6])
                    self.settings[key] = value
                self._cond.notify_all()
            self._send(frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            self._send(frame(PING, ACK, 0, payload))  # a live peer: keepalives find nothing wrong
        elif kind == PING:
            with self._cond:
                self.pongs += 1
                self._cond.notify_all()
        elif kind == RST_STREAM:
            with self._cond:
                self.resets += 1
                self._cond.notify_all()

    def open_streams(self, path: str, count: int) -> None:
        """``count`` streams calling ``path`` whose request never comes; returns once the server has read
        them all (it answered a PING sent after them)."""
        block = request_headers(path)
        out = b""
        for _ in range(count):
            out += frame(HEADERS, END_HEADERS, self._next, block)
            self._next += 2
        with self._cond:
            answered = self.pongs
        self._send(out + frame(PING, 0, 0, b"stalling"))
        with self._cond:
            if not self._cond.wait_for(lambda: self.pongs > answered or self.closed, timeout=30):
                raise AssertionError("the server did not answer a PING within 30 s")

    def open_calls(self, path: str, message: bytes, count: int) -> list[int]:
        """``count`` calls to ``path``, each sending ``message`` (a serialized request) and half-closing;
        returns their stream ids once the server has sent HEADERS on each (its answer, or a refusal)."""
        block = request_headers(path)
        body = b"\0" + struct.pack(">I", len(message)) + message  # one uncompressed gRPC message
        ids = [self._next + 2 * k for k in range(count)]
        self._next += 2 * count
        self._send(b"".join(frame(HEADERS, END_HEADERS, i, block) + frame(DATA, END_STREAM, i, body) for i in ids))
        with self._cond:
            if not self._cond.wait_for(lambda: self.answered.issuperset(ids) or self.closed, timeout=30):
                raise AssertionError("the server did not answer every call within 30 s")
        return ids

    def reset_flood(self, path: str, until: threading.Event) -> int:
        """Open streams calling ``path`` and reset each at once (HTTP/2 rapid reset) until ``until`` is set
        or the server closes the connection; returns how many."""
        block = request_headers(path)
        sent = 0
        while not until.is_set() and not self.closed and self._next < 2**31 - 2000:
            burst = b"".join(frame(HEADERS, END_HEADERS, self._next + 2 * k, block)
                             + frame(RST_STREAM, 0, self._next + 2 * k, b"\0\0\0\x08")  # CANCEL
                             for k in range(500))
            try:
                self._send(burst)
            except OSError:
                break
            self._next += 1000
            sent += 500
        return sent

    def close(self) -> None:
        self._tls.shutdown()
        self._reader.join(10)
        self._tls.close()


@contextmanager
def stalling(address: str, certs: netcerts.CertSet, path: str, connections: int,
             streams: int, sources: Sequence[str | None] = ()) -> Iterator[list[StallingPeer]]:
    """``connections`` peers, each with ``streams`` calls to ``path`` whose request never comes (the
    i-th connecting from ``sources[i]`` when given); closed on the way out."""
    peers: list[StallingPeer] = []
    try:
        for i in range(connections):
            peers.append(StallingPeer(address, certs, sources[i] if i < len(sources) else None))
    except BaseException:
        for peer in peers:
            peer.close()
        raise
    try:
        for peer in peers:
            peer.open_streams(path, streams)
        yield peers
    finally:
        for peer in peers:
            peer.close()


def watches_of_many_hosts(channels: list[grpc.Channel], service: str, timeout: float) -> None:
    """One health Watch per channel (a host each), all held open at once: each must say SERVING."""
    from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc

    watches = []
    try:
        for channel in channels:
            watch = health_pb2_grpc.HealthStub(channel).Watch(  # type: ignore[no-untyped-call]
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
            watches.append(watch)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        for watch in watches:
            watch.cancel()
        for channel in channels:
            channel.close()
