"""The OpenSSL relay that lets grpcio talk to go-plugin's P-521 AutoMTLS peers."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from plugbay.core.protocol import tls
from plugbay.core.transport import relay as tlsrelay
from plugbay.core.transport import sockets


@pytest.fixture
def echo_server(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "echo.sock")
    listener = sockets.open_listener("unix", path)
    listener.settimeout(10)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    thread = threading.Thread(target=loop, name="plugbay-test-echo", daemon=True)
    thread.start()
    yield path
    stop.set()
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    thread.join(timeout=10)


def _relay_pair(tmp_path: Path, echo: str, server: tls.CertKey, client: tls.CertKey,
                client_trusts: bytes) -> tuple[tlsrelay.TLSRelay, tlsrelay.TLSRelay]:
    # the terminating side's context made on a thread first, as serve() does behind the relay
    early = tls.early_server_context()
    term = tlsrelay.TLSRelay(sockets.open_listener("tcp", "127.0.0.1:0"), ("unix", echo),
                             tls.server_context(server, client.cert_pem, early()), "terminate")
    orig = tlsrelay.TLSRelay(sockets.open_listener("unix", str(tmp_path / "orig.sock")), term.address,
                             tls.client_context(client, client_trusts), "originate")
    return term, orig


def test_p521_certificates_round_trip_a_large_payload(tmp_path: Path, echo_server: str) -> None:
    server, client = tls.generate_cert(ec.SECP521R1()), tls.generate_cert(ec.SECP521R1())
    assert not tls.grpc_can_use(server.cert_pem)  # the reason the relay exists
    term, orig = _relay_pair(tmp_path, echo_server, server, client, server.cert_pem)
    try:
        payload = os.urandom(3_000_000)
        with sockets.dial("unix", orig.address[1], timeout=10) as sock:
            writer = threading.Thread(target=sock.sendall, args=(payload,), name="plugbay-test-writer")
            writer.start()
            got = bytearray()
            while len(got) < len(payload):
                chunk = sock.recv(65536)
                assert chunk, "relay closed the connection early"
                got += chunk
            writer.join(timeout=10)
        assert bytes(got) == payload
    finally:
        orig.close()
        term.close()
    assert not os.path.exists(str(tmp_path / "orig.sock"))


def test_a_client_with_the_wrong_certificate_is_refused(tmp_path: Path, echo_server: str) -> None:
    server, client, stranger = (tls.generate_cert(ec.SECP521R1()) for _ in range(3))
    term = tlsrelay.TLSRelay(sockets.open_listener("tcp", "127.0.0.1:0"), ("unix", echo_server),
                             tls.server_context(server, client.cert_pem), "terminate")
    try:
        host, port = term.address[1].rsplit(":", 1)
        ctx = tls.client_context(stranger, server.cert_pem)
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                with ctx.wrap_socket(raw, server_hostname="localhost") as conn:
                    # TLS 1.3 reports a refused client certificate on the first read
                    conn.sendall(b"x")
                    if not conn.recv(1):
                        raise ConnectionError("closed by server")
    finally:
        term.close()


def test_the_client_refuses_a_server_it_does_not_trust(tmp_path: Path, echo_server: str) -> None:
    server, client, other = (tls.generate_cert() for _ in range(3))
    term, orig = _relay_pair(tmp_path, echo_server, server, client, other.cert_pem)
    try:
        with sockets.dial("unix", orig.address[1], timeout=10) as sock:
            sock.settimeout(10)
            # the relay drops the plaintext side after the failed handshake
            try:
                sock.sendall(b"hello")
                assert sock.recv(10) == b""
            except (ConnectionResetError, BrokenPipeError):  # dropped before or after our bytes
                pass
    finally:
        orig.close()
        term.close()


def test_unknown_network_is_a_config_error() -> None:
    from plugbay.errors import ConfigError

    with pytest.raises(ConfigError, match="unix' or 'tcp"):
        sockets.open_listener("udp", "x")


def test_certificate_conversion_errors_say_what_to_pass() -> None:
    from plugbay.errors import ConfigError

    cert = tls.generate_cert()
    assert tls.der_to_pem(tls.pem_to_der(cert.cert_pem)) == cert.cert_pem
    with pytest.raises(ConfigError, match="not a PEM certificate .*; pass the PEM text of one certificate"):
        tls.pem_to_der(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="not a DER certificate .*; pass the DER bytes of one certificate"):
        tls.der_to_pem(b"AAA" * 20)


def test_tcp_connections_both_ways_turn_off_nagle() -> None:
    # gRPC writes small frames; with Nagle on, a reply waits for the previous segment's ACK.
    listener = sockets.open_listener("tcp", "127.0.0.1:0")
    listener.settimeout(sockets.ACCEPT_POLL)
    try:
        dialed = sockets.dial("tcp", sockets.listener_address(listener)[1], timeout=5)
        accepted = next(sockets.accept_each(listener, lambda: False))
        with dialed, accepted:
            for sock in (dialed, accepted):
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        sockets.close_listener(listener)


def _not_closed(socks: list[socket.socket], trickle: list[socket.socket], within: float) -> int:
    """How many of ``socks`` the peer has not closed within ``within`` s; ``trickle`` ones get a byte per round."""
    import select
    import time

    open_ = set(socks)
    deadline = time.monotonic() + within
    while open_ and time.monotonic() < deadline:
        for sock in trickle:
            if sock in open_:
                try:
                    sock.send(b"\x00")
                except OSError:
                    open_.discard(sock)
        ready, _, _ = select.select(list(open_), [], [], 0.2)
        for sock in ready:
            try:
                if not sock.recv(65536):
                    open_.discard(sock)
            except OSError:
                open_.discard(sock)
    return len(open_)


def test_connections_that_never_finish_tls_are_closed(tmp_path: Path, echo_server: str) -> None:
    server, client = tls.generate_cert(ec.SECP521R1()), tls.generate_cert(ec.SECP521R1())
    term = tlsrelay.TLSRelay(sockets.open_listener("tcp", "127.0.0.1:0"), ("unix", echo_server),
                             tls.server_context(server, client.cert_pem), "terminate", handshake_timeout=1.0)
    orig = tlsrelay.TLSRelay(sockets.open_listener("unix", str(tmp_path / "orig.sock")), term.address,
                             tls.client_context(client, server.cert_pem), "originate")
    idle: list[socket.socket] = []
    try:
        host, port = term.address[1].rsplit(":", 1)
        idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(50)]
        trickle = idle[:5]
        for sock in trickle:  # a ClientHello record header announcing 255 bytes, then a byte per round
            sock.sendall(b"\x16\x03\x01\x00\xff")
        # a real TLS peer still gets through meanwhile
        with sockets.dial("unix", orig.address[1], timeout=10) as sock:
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
        # the total handshake bound closes all of them, trickling ones included (generous wait)
        assert _not_closed(idle, trickle, within=30.0) == 0
    finally:
        for sock in idle:
            sock.close()
        orig.close()
        term.close()


def test_nothing_is_dialed_for_a_peer_before_its_tls_handshake(tmp_path: Path) -> None:
    server, client = tls.generate_cert(ec.SECP521R1()), tls.generate_cert(ec.SECP521R1())
    target = sockets.open_listener("unix", str(tmp_path / "target.sock"))  # never accepts: counts dials
    term = tlsrelay.TLSRelay(sockets.open_listener("tcp", "127.0.0.1:0"), ("unix", str(tmp_path / "target.sock")),
                             tls.server_context(server, client.cert_pem), "terminate", handshake_timeout=1.0)
    idle: list[socket.socket] = []
    try:
        host, port = term.address[1].rsplit(":", 1)
        idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(20)]
        assert _not_closed(idle, [], within=30.0) == 0
        target.setblocking(False)
        with pytest.raises(BlockingIOError):
            target.accept()
    finally:
        for sock in idle:
            sock.close()
        term.close()
        sockets.close_listener(target)


def test_listeners_use_the_system_backlog() -> None:
    import select
    import time

    # nobody accepts: every connection has to wait in the listen backlog (64 before; now the system's)
    listener = sockets.open_listener("tcp", "127.0.0.1:0")
    conns = [socket.socket() for _ in range(200)]
    try:
        for conn in conns:
            conn.setblocking(False)
            conn.connect_ex(listener.getsockname())
        pending, connected = set(conns), 0
        deadline = time.monotonic() + 10
        while pending and time.monotonic() < deadline:
            _, ready, _ = select.select([], list(pending), [], 0.2)
            for conn in ready:
                pending.discard(conn)
                connected += conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        assert connected == len(conns)
    finally:
        for conn in conns:
            conn.close()
        listener.close()
