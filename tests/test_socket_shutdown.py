"""shutdown_and_join on TLS sockets: it wakes their pumps without taking TLS away from under them."""

from __future__ import annotations

import socket
import ssl
import threading

from plugbay.core.protocol import tls
from plugbay.core.transport.sockets import shutdown_and_join


def test_shutting_down_a_tls_socket_keeps_its_tls_layer() -> None:
    """SSLSocket.shutdown() drops the TLS object before the raw shutdown: a pump sending in between
    (relay.close() or a port-forward's close() runs while their threads move bytes) would write
    plaintext on the wire. shutdown_and_join shuts the raw socket down and leaves TLS in place."""
    server_cert, client_cert = tls.generate_cert(), tls.generate_cert()
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    server = tls.server_context(server_cert, client_cert.cert_pem).wrap_socket(
        a, server_side=True, do_handshake_on_connect=False)
    client = tls.client_context(client_cert, server_cert.cert_pem).wrap_socket(
        b, server_hostname=tls.HOSTNAME, do_handshake_on_connect=False)
    shaken = threading.Thread(target=client.do_handshake, name="plugbay-test-handshake")
    shaken.start()
    server.do_handshake()
    shaken.join(10)
    try:
        assert client.version() is not None
        shutdown_and_join([client], [])
        assert client.version() is not None, "the TLS layer was dropped: a send now goes out in plaintext"
        try:
            client.send(b"secret")
        except OSError:
            pass  # the socket is shut down: the send fails, within TLS
        got = b""
        try:
            got = server.recv(100)
        except (OSError, ssl.SSLError):
            pass
        assert b"secret" not in got
    finally:
        client.close()
        server.close()
