"""A plaintext target where something that is not a plugin answers (an HTTP/1 server, a service that
sends other bytes) ends the start at once with a RemoteProtocolError saying so (no TLS is involved: it was
a RemoteTLSError worded "TLS with remote plugin ... failed ... check NetworkTLS(...)").

gRPC reports such a peer as "Failed parsing HTTP/2 (Expected SETTINGS frame ...)"; the pool took it for a
plugin not up yet and RemoteClient(insecure=True) waited out start_timeout (30 s by default) for a plugin
that could never answer there, while the same endpoint over TLS was named at once ("the plugin speaks
plaintext"). Real servers on 127.0.0.1: http.server's, and a socket server that answers with text.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import netcerts
from tests.loopback_http_util import LoopbackServer
from tests.net_util import HANDSHAKE, PLUGINS

import grpc

from plugbay import AsyncRemoteClient, HandshakeError, RemoteClient, RemoteConfig, RemoteProtocolError, RemoteTLSError


class Chatter(LoopbackServer):
    """Answers every connection with a line of text and hangs up (a service of another kind)."""

    def serve(self, conn: socket.socket) -> None:
        with conn:
            conn.sendall(b"220 mail.example ESMTP ready\r\n")


@contextlib.contextmanager
def plain_http() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name="plain-http")
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(params=["http", "text"])
def not_a_plugin(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "text":
        chatter = Chatter("chatter")
        try:
            yield f"127.0.0.1:{chatter.port}"
        finally:
            chatter.close()
        return
    with plain_http() as address:
        yield address


def config(address: str, brokered: bool = True) -> RemoteConfig:
    # a start_timeout the old wait ran out (the error was then a HandshakeTimeoutError), far above the answer
    return RemoteConfig(target=f"static:///{address}", handshake=HANDSHAKE, plugins=PLUGINS, insecure=True,
                        brokered=brokered, start_timeout=60.0)


def test_a_plaintext_target_that_is_no_plugin_is_named(not_a_plugin: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="plugbay.network")
    with pytest.raises(RemoteProtocolError) as err:
        with RemoteClient(config(not_a_plugin)):
            pass
    assert "answered with something other than HTTP/2 (gRPC)" in str(err.value), err.value
    assert "pass tls=NetworkTLS(...)" in str(err.value), err.value
    # no TLS is involved: neither the error nor the pool's log sends the user to NetworkTLS's files
    assert not isinstance(err.value, RemoteTLSError) and isinstance(err.value, HandshakeError)
    assert isinstance(err.value, grpc.RpcError) and err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "TLS with" not in str(err.value) and "NetworkTLS(cert_file" not in str(err.value), err.value
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "answers no gRPC" in logged and "fails TLS" not in logged, logged


def test_the_asyncio_client_names_it_too(not_a_plugin: str) -> None:
    import asyncio

    async def start() -> None:
        async with AsyncRemoteClient(config(not_a_plugin, brokered=False)):
            pass

    with pytest.raises(RemoteProtocolError) as err:
        asyncio.run(start())
    assert "answered with something other than HTTP/2 (gRPC)" in str(err.value), err.value


class TLSOnly(LoopbackServer):
    """A TLS server (no plugin behind it): a plaintext client's bytes fail its handshake, a TLS probe's pass."""

    def __init__(self, certs: netcerts.CertSet) -> None:
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(str(certs.cert_file), str(certs.key_file))
        super().__init__("tls-only")

    def serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            with self._ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            conn.close()


def _at_deadline(*addresses: str) -> BaseException:
    cfg = RemoteConfig(target=f"static:///{','.join(addresses)}", handshake=HANDSHAKE, plugins=PLUGINS,
                       insecure=True, start_timeout=3.0)  # the wait's bound, no assertion on it
    with pytest.raises(HandshakeError) as err:
        with RemoteClient(cfg):
            pass
    return err.value


def test_two_plaintext_replicas_that_are_no_plugin_are_each_named_so_at_the_deadline(closed_port: int) -> None:
    # an endpoint down beside them keeps the start waiting to its deadline (PoolTLS.tls_at_deadline)
    with plain_http() as a, plain_http() as b:
        error = _at_deadline(a, b, f"127.0.0.1:{closed_port}")
    assert isinstance(error, RemoteProtocolError) and not isinstance(error, RemoteTLSError), error
    assert "failed TLS" not in str(error) and "TLS with" not in str(error), error
    assert "is no gRPC plugin either" in str(error), error


def test_a_mix_of_an_endpoint_wanting_tls_and_one_that_is_no_plugin_is_named_by_each_failure(
        tmp_path: Path, closed_port: int) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    with TLSOnly(certs) as tls_only, plain_http() as http_one:
        tls_at = f"127.0.0.1:{tls_only.port}"
        for order in ((tls_at, http_one), (http_one, tls_at)):  # the same error whichever is listed first
            error = _at_deadline(*order, f"127.0.0.1:{closed_port}")  # an endpoint that is down
            assert isinstance(error, RemoteTLSError), error
            assert f"at tcp:{tls_at} failed" in str(error), error
            assert f"tcp:{http_one} is no gRPC plugin (" in str(error), error
