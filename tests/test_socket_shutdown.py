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


def test_waking_a_kubernetes_stream_reader_keeps_its_tls_layer() -> None:
    """shut_stream (the pod log follower's and the watch's close) wakes a thread reading an https
    response. urllib3's HTTPResponse.shutdown() is the SSLSocket's own shutdown, which drops the TLS
    object under that reader: it must shut the raw socket down instead."""
    import urllib3

    from plugbay.runners.kubernetes.logs import shut_stream

    server_cert, client_cert = tls.generate_cert(), tls.generate_cert()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    served = threading.Event()

    def serve() -> None:  # one connection, read and written on this thread only
        conn, _ = listener.accept()
        with tls.server_context(server_cert, client_cert.cert_pem).wrap_socket(conn, server_side=True) as peer:
            peer.settimeout(10)
            request = b""
            while b"\r\n\r\n" not in request and len(request) < 65536:
                request += peer.recv(4096) or b"\r\n\r\n"
            peer.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            served.set()
            try:
                while peer.recv(4096):  # until the client's side goes
                    pass
            except OSError:
                pass

    server = threading.Thread(target=serve, name="plugbay-test-https")
    server.start()
    pool = urllib3.HTTPSConnectionPool("127.0.0.1", listener.getsockname()[1], server_hostname=tls.HOSTNAME,
                                       ssl_context=tls.client_context(client_cert, server_cert.cert_pem))
    try:
        resp = pool.urlopen("GET", "/log?follow=true", preload_content=False, retries=False, timeout=10)
        assert served.wait(10)
        got: list[bytes] = []

        def read() -> None:
            try:
                got.extend(resp.stream(1, decode_content=False))
            except urllib3.exceptions.HTTPError:
                pass  # "ended prematurely": the stream was shut under the read

        reader = threading.Thread(target=read, name="plugbay-test-reader")
        reader.start()
        sock = resp.connection.sock
        assert sock.version() is not None
        # The woken reader closes the connection, which also drops the TLS object: whether it still had
        # one when that close began is what tells a raw shutdown from the SSLSocket's own. Not version():
        # it says None once the read has failed (OpenSSL leaves the finished state), TLS object or not.
        tls_at_close: list[bool] = []
        closes = sock.close

        def close_seeing_tls() -> None:
            tls_at_close.append(sock._sslobj is not None)
            closes()

        sock.close = close_seeing_tls
        for _ in range(200):  # the reader has the first chunk and waits for more
            if got:
                break
            threading.Event().wait(0.05)
        shut_stream(resp)
        tls_after_shut = sock._sslobj is not None
        reader.join(10)
        assert not reader.is_alive(), "shut_stream did not wake the reader"
        assert False not in tls_at_close, "the TLS layer was dropped under the reader before it closed"
        assert tls_after_shut or tls_at_close, "the TLS layer was dropped under the reader"
        assert b"".join(got).startswith(b"f")
    finally:
        pool.close()
        listener.close()
        server.join(10)
