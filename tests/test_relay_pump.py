"""The relay's direct path (core/transport/relaypump.py) when the receiving socket takes only part of a send.

A steady connection sends what one side gave straight to the other socket; a
slow receiver makes that send partial, and the rest must be queued in order.
Real parts: a terminating TLSRelay (real OpenSSL) between a TLS client that
writes many short records and a plaintext server, both reading slowly, with
megabytes going both ways at once; every byte is checked (sha256).
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from plugbay.core.protocol import tls
from plugbay.core.transport import ioloop, sockets
from plugbay.core.transport.relay import TLSRelay
from tests.thread_util import wait_for

SIZE = 6 * 1024 * 1024  # each way: well past the socket buffers, so the receivers fall behind
RECORD = 1000  # the TLS client's records: short, so the relay sends each straight on
SIP = 32 * 1024  # what a slow reader takes per tick (about 1 ms)
DEADLINE = 60.0


def _slow_plain_reader(sock: socket.socket, want: int, digest: hashlib._Hash, stop: threading.Event) -> None:
    got, deadline = 0, time.monotonic() + DEADLINE
    while got < want and time.monotonic() < deadline and not stop.is_set():
        time.sleep(0.001)
        data = sock.recv(SIP)
        if not data:
            return
        digest.update(data)
        got += len(data)


def _plain_side(listener: socket.socket, payload: bytes, want: int, got: list[hashlib._Hash],
                stop: threading.Event, errors: list[BaseException]) -> None:
    """The relay's target: writes ``payload`` as fast as it can while reading ``want`` bytes slowly."""
    try:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(DEADLINE)
            digest = hashlib.sha256()
            got.append(digest)
            reader = threading.Thread(target=_slow_plain_reader, args=(conn, want, digest, stop),
                                      name="plugbay-test-plain-reader")
            reader.start()
            try:
                conn.sendall(payload)
            finally:
                reader.join(DEADLINE)
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def _tls_side(sock: ssl.SSLSocket, payload: bytes, want: int) -> tuple[str, int]:
    """Write ``payload`` in short records and read ``want`` bytes slowly, on one thread (one SSL object)."""
    sock.setblocking(False)
    digest, got, sent = hashlib.sha256(), 0, 0
    deadline = time.monotonic() + DEADLINE
    while (got < want or sent < len(payload)) and time.monotonic() < deadline:
        for _ in range(256):  # a burst of records per tick, until the socket is full
            if sent >= len(payload):
                break
            try:
                sent += sock.send(payload[sent:sent + RECORD])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                break
        try:
            data = sock.recv(SIP)
            if not data:
                break
            digest.update(data)
            got += len(data)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        time.sleep(0.001)
    return digest.hexdigest(), got


# one way alone keeps the connection steady (the wake-ups' own direct sends are partial);
# both at once queue one way while the other's records go straight on (the pump's direct sends)
@pytest.mark.parametrize("up_size,down_size", [(SIZE, 0), (0, SIZE), (SIZE, SIZE)], ids=["up", "down", "both"])
def test_megabytes_in_short_records_to_slow_readers_arrive_byte_exact(
        tmp_path: Path, up_size: int, down_size: int) -> None:
    server, client = tls.generate_cert(ec.SECP521R1()), tls.generate_cert(ec.SECP521R1())
    target = sockets.open_listener("unix", str(tmp_path / "plain.sock"))
    target.settimeout(DEADLINE)
    relay = TLSRelay(sockets.open_listener("tcp", "127.0.0.1:0"), ("unix", str(tmp_path / "plain.sock")),
                     tls.server_context(server, client.cert_pem), "terminate")
    up, down = os.urandom(up_size), os.urandom(down_size)
    plain_got: list[hashlib._Hash] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    plain = threading.Thread(target=_plain_side, args=(target, down, up_size, plain_got, stop, errors),
                             name="plugbay-test-plain")
    plain.start()
    try:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # the relay's TLS sends fill it soon
        host, port = relay.address[1].rsplit(":", 1)
        raw.settimeout(DEADLINE)
        raw.connect((host, int(port)))
        with tls.client_context(client, server.cert_pem).wrap_socket(raw, server_hostname="localhost") as sock:
            tls_digest, tls_got = _tls_side(sock, up, down_size)
            plain.join(DEADLINE)
        assert not plain.is_alive(), "the plaintext side is still running"
        assert not errors, errors
        assert tls_got == down_size
        assert tls_digest == hashlib.sha256(down).hexdigest()
        assert plain_got and plain_got[0].hexdigest() == hashlib.sha256(up).hexdigest()
        wait_for(lambda: relay.connections == 0, "the relay to drop the finished connection", timeout=15)
    finally:
        stop.set()
        relay.close()
        plain.join(DEADLINE)
        sockets.close_listener(target)
    assert ioloop.shared().join_idle()
