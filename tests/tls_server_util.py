"""A TLS test server on a loopback port whose every connection is handled by a test's own rule."""

from __future__ import annotations

import socket
import ssl
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from plugbay._proto.grpc.health.v1 import health_pb2_grpc


class TLSTestServer:
    """Listens at ``listen`` (host:port) with ``cert``/``key``, requiring a client certificate from ``ca``;
    one thread accepts (polling its stop every 0.2 s) and hands each connection to ``handle()``.
    ``taken`` counts what the subclass says it took."""

    def __init__(self, listen: str, cert: Path, key: Path, ca: Path, alpn: list[str] | None = None) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.ctx.load_verify_locations(str(ca))
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        if alpn:
            self.ctx.set_alpn_protocols(alpn)
        host, _, port = listen.rpartition(":")
        self._sock = socket.create_server((host, int(port)))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self.taken = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            try:
                self.handle(conn)
            except OSError:  # a handshake that failed, or a quiet peer's timeout
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._sock.close()


def serve_mtls(listen: str, certs: Any, health: Any, handlers: tuple[Any, ...] = ()) -> tuple[grpc.Server, str]:
    """A started grpcio server over mTLS at ``listen`` (host:port; port 0: one the server binds itself, free
    then, as a port probed free and closed is not) with ``certs`` (a tests.netcerts CertSet, requiring a client
    certificate from its client CA): the health servicer ``health`` and ``handlers``. Returns it and the
    host:port it listens at."""
    server = grpc.server(futures.ThreadPoolExecutor(4))
    health_pb2_grpc.add_HealthServicer_to_server(health, server)  # type: ignore[no-untyped-call]
    if handlers:
        server.add_generic_rpc_handlers(handlers)
    creds = grpc.ssl_server_credentials([(certs.key_file.read_bytes(), certs.cert_file.read_bytes())],
                                        root_certificates=certs.client_ca_file.read_bytes(),
                                        require_client_auth=True)
    host, _, asked = listen.rpartition(":")
    port = server.add_secure_port(listen, creds)
    assert port and int(asked) in (0, port), (listen, port)  # grpcio's 0: it could not bind
    server.start()
    return server, f"{host}:{port}"
