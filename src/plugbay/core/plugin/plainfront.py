"""The TLS front of a network server that serves plain gRPC only (multiplex=False, the gateway's default).

grpcio's own TLS listener caps nothing but each handshake's time (grpc.server_handshake_timeout_ms):
anyone who can reach the port could open connections that never send a byte until the process ran out
of file descriptors ("File descriptor limit reached" in grpcio's log), and hosts with valid certificates
were refused for as long as those connections were reopened. So TLS is terminated by a TLSRelay, as on
serve()'s brokering front (plugbay.core.plugin.netmux): at most MAX_HANDSHAKING connections in their
handshake (past it the oldest of the address holding the most is dropped), TLS_TIMEOUT for the handshake,
FIRST_BYTES_TIMEOUT for the HTTP/2 preface after it; anything but gRPC is dropped. The gRPC server
listens on a private unix socket; each relayed connection's end is bound to an abstract name recorded
for the peer's address (plugbay.core.plugin.peershare), so per-peer limits see who it is.
"""

from __future__ import annotations

import socket

from plugbay.core.plugin.netmux import FIRST_BYTES_TIMEOUT, HTTP2_PREFACE, TLS_TIMEOUT
from plugbay.core.plugin.peershare import front_peer
from plugbay.core.transport.certfiles import CertFiles
from plugbay.core.transport.relay import TLSRelay
from plugbay.core.transport.relayconn import RelayConn


class PlainFront:
    """Owns the public listener (through the relay) in front of a gRPC server's private socket."""

    def __init__(self, listener: socket.socket, certs: CertFiles, grpc_target: tuple[str, str]) -> None:
        self._grpc_target = grpc_target
        self._relay = TLSRelay(listener, self._route, certs.ssl_context, "terminate",
                               handshake_timeout=TLS_TIMEOUT, first_bytes_timeout=FIRST_BYTES_TIMEOUT)

    def _route(self, first: bytes, conn: RelayConn) -> tuple[str, str] | None:
        n = min(len(first), len(HTTP2_PREFACE))
        if not n or first[:n] != HTTP2_PREFACE[:n]:
            return None  # not gRPC (a yamux session has no instance to go to here)
        if conn.peer:  # the server's gates count this connection against its peer's address
            conn.bind_name, forget = front_peer(conn.peer)
            conn.on_close(forget)
        return self._grpc_target

    @property
    def connections(self) -> int:
        return self._relay.connections

    def close(self) -> None:
        self._relay.close()
