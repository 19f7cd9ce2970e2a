"""An originating relay resumes its peer's TLS session on later connections, and never skips a new peer's proof.

Real parts: relay pairs with real TLS (OpenSSL both ends) in front of a real
echo server, and a real go-plugin 1.0.1 Go plugin with AutoMTLS (P-521, the
peer the host relays to), dialed twice as a Client dials it (its channel, then
its broker stream).
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from plugbay.core.protocol import tls
from plugbay.core.protocol.handshake import ENV_CLIENT_CERT, parse_handshake_line
from plugbay.core.transport import ioloop, sockets, tlsresume
from plugbay.core.transport.relay import ContextSource, TLSRelay
from plugbay.core.transport.tlsresume import Resumption
from tests import gobuild
from tests.test_relay_loop import Echo, _round_trip

@pytest.fixture(autouse=True)
def _sessions_read_safely(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resumption as on a Python whose session getter does not leak (3.12.8+, 3.13.1+): what these
    tests check; on this one it is off (test_no_session_is_read_where_reading_one_leaks)."""
    monkeypatch.setattr(tlsresume, "SESSION_READ_LEAKS", False)


_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def _ticketing(own: tls.CertKey, client_pem: bytes) -> ssl.SSLContext:
    ctx = tls.server_context(own, client_pem)
    ctx.num_tickets = 1  # plugbay's plugin side sends none; a Go plugin sends one, as this does
    return ctx


@contextmanager
def _echo_relayed(tmp_path: Path, server: ssl.SSLContext, client: ContextSource) -> Iterator[TLSRelay]:
    """An echo server behind a terminating relay (``server``), dialed by an originating one (``client``)."""
    echo = Echo(str(tmp_path / "echo.sock"))
    term = TLSRelay(sockets.open_listener("tcp", "127.0.0.1:0"), ("unix", str(tmp_path / "echo.sock")),
                    server, "terminate")
    orig = TLSRelay(sockets.open_listener("unix", str(tmp_path / "orig.sock")), term.address, client,
                    "originate")
    try:
        yield orig
    finally:
        orig.close()
        term.close()
        echo.close()
    assert ioloop.shared().join_idle()


def test_later_connections_resume_and_carry_their_bytes(tmp_path: Path) -> None:
    server, client = tls.generate_cert(ec.SECP521R1()), tls.generate_cert()
    with _echo_relayed(tmp_path, _ticketing(server, client.cert_pem),
                       tls.client_context(client, server.cert_pem)) as orig:
        payloads = [os.urandom(100_000 + i) for i in range(3)]
        assert [_round_trip(orig.address[1], p) for p in payloads] == payloads
        assert orig.resumed == 2  # the first connection's handshake was full, the next two resumed


def test_a_new_context_is_not_offered_an_old_session(tmp_path: Path) -> None:
    """Network mode's provider makes a new context when the files rotate: its first dial is a full handshake."""
    server, client = tls.generate_cert(), tls.generate_cert()
    with _echo_relayed(tmp_path, _ticketing(server, client.cert_pem),
                       lambda: tls.client_context(client, server.cert_pem)) as orig:
        assert [_round_trip(orig.address[1], b"x" * 1000) for _ in range(3)] == [b"x" * 1000] * 3
        assert orig.resumed == 0


def test_a_different_peer_at_the_same_address_still_has_to_prove_itself(tmp_path: Path) -> None:
    """A kept session is no pass: a peer that cannot resume it gets a full handshake, verified as ever."""
    echo = Echo(str(tmp_path / "echo.sock"))
    server, client, stranger = tls.generate_cert(), tls.generate_cert(), tls.generate_cert()
    target = ("unix", str(tmp_path / "peer.sock"))
    term = TLSRelay(sockets.open_listener(*target), ("unix", str(tmp_path / "echo.sock")),
                    _ticketing(server, client.cert_pem), "terminate")
    orig = TLSRelay(sockets.open_listener("unix", str(tmp_path / "orig.sock")), target,
                    tls.client_context(client, server.cert_pem), "originate")
    try:
        assert _round_trip(orig.address[1], b"first") == b"first"  # the session is kept now
        term.close()
        term = TLSRelay(sockets.open_listener(*target), ("unix", str(tmp_path / "echo.sock")),
                        _ticketing(stranger, client.cert_pem), "terminate")  # trusts the client; other keys
        with sockets.dial("unix", orig.address[1], timeout=10) as conn:
            try:  # refused: not the peer the host trusts (the relay closes or resets the connection)
                conn.sendall(b"second")
                got = conn.recv(100)
            except (ConnectionResetError, BrokenPipeError):
                got = b""
        assert got == b""
        assert orig.resumed == 0
    finally:
        orig.close()
        term.close()
        echo.close()
    assert ioloop.shared().join_idle()


_reason = gobuild.go_missing_reason()


@pytest.mark.skipif(_reason is not None, reason=_reason or "")
def test_the_second_connection_to_a_go_plugin_resumes(tmp_path: Path) -> None:
    exe = str(gobuild.build_go("kv_plugin"))
    host = tls.generate_cert()
    env = {**os.environ, "BASIC_PLUGIN": "hello", "PLUGIN_PROTOCOL_VERSIONS": "1",
           ENV_CLIENT_CERT: host.cert_pem.decode(), "TMPDIR": str(tmp_path)}  # its socket goes there
    proc = subprocess.Popen([exe], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    relay = None
    try:
        assert proc.stdout is not None
        info = parse_handshake_line(proc.stdout.readline().decode())
        assert info.server_cert  # go-plugin announced its P-521 certificate
        relay = TLSRelay(sockets.open_listener("unix", str(tmp_path / "orig.sock")), (info.network, info.address),
                         tls.client_context(host, tls.der_to_pem(info.server_cert)), "originate")
        for _ in range(2):
            with sockets.dial("unix", relay.address[1], timeout=10) as conn:
                conn.sendall(_PREFACE)
                assert conn.recv(9)[3:4] == b"\x04"  # the plugin's SETTINGS frame came back through TLS
                conn.shutdown(socket.SHUT_WR)
        assert relay.resumed == 1
    finally:
        if relay is not None:
            relay.close()
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    assert ioloop.shared().join_idle()


def test_a_peer_that_sends_no_ticket_is_asked_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a session costs ~0.2 ms on the shared loop: once per relay when the peer gives none."""
    looks: list[int] = []
    keep = Resumption.keep
    monkeypatch.setattr(Resumption, "keep", lambda self, t: (looks.append(1), keep(self, t))[1])
    server, client = tls.generate_cert(), tls.generate_cert()
    with _echo_relayed(tmp_path, tls.server_context(server, client.cert_pem),  # plugbay's: no tickets
                       tls.client_context(client, server.cert_pem)) as orig:
        payloads = [os.urandom(1_000_000 + i) for i in range(3)]
        assert [_round_trip(orig.address[1], p) for p in payloads] == payloads
        assert orig.resumed == 0 and len(looks) == 1


def test_a_session_that_cannot_be_read_turns_resumption_off_and_the_connection_goes_on() -> None:
    class Unreadable:  # CPython's session copy fails so for a session over 0xFF00 bytes of DER
        context = None

        @property
        def session(self) -> None:
            raise ValueError("i2d() failed")

    resumption = Resumption()
    resumption.keep(Unreadable())  # type: ignore[arg-type]
    assert resumption.off and resumption.offer(None) is None  # type: ignore[arg-type]


def test_no_session_is_read_where_reading_one_leaks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # CPython before 3.12.8 (and 3.13.0) leaks a copy of the session at each read of
    # SSLSocket.session: there every connection makes a full handshake, and no session is read
    monkeypatch.setattr(tlsresume, "SESSION_READ_LEAKS", True)
    looks: list[int] = []
    keep = Resumption.keep
    monkeypatch.setattr(Resumption, "keep", lambda self, t: (looks.append(1), keep(self, t))[1])
    server, client = tls.generate_cert(ec.SECP521R1()), tls.generate_cert()
    with _echo_relayed(tmp_path, _ticketing(server, client.cert_pem),  # a peer that sends tickets
                       tls.client_context(client, server.cert_pem)) as orig:
        payloads = [os.urandom(100_000 + i) for i in range(3)]
        assert [_round_trip(orig.address[1], p) for p in payloads] == payloads
        assert orig.resumed == 0 and looks == []
