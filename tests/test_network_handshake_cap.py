"""Network mode's public TLS front bounds the connections still in their TLS handshake.

Anyone who can reach the address can connect before proving anything: idle
connections that never start a handshake are capped per relay (the oldest is
dropped for a new one), so they cannot take the plugin's file descriptors from
a host with a valid certificate, which still connects and calls during the flood.
The plugin is the unmodified KV example in network mode, as in test_network_serve.
"""

from __future__ import annotations

import os
import select
import socket
import time
from pathlib import Path

import grpc

from plugbay.core.transport.relay import MAX_HANDSHAKING
from tests import netcerts
from tests.test_network_serve import NetPlugin, kv_pb2, kv_pb2_grpc, secure, tls_env

FLOOD = MAX_HANDSHAKING + 200
MARGIN = 16  # the valid host's new connection (TLS side, its dial to gRPC, gRPC's end) and slack


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _ended(sock: socket.socket) -> bool:
    """The plugin closed this connection (readable: end of file or a reset)."""
    return bool(select.select([sock], [], [], 0)[0])


def test_idle_unauthenticated_connections_are_capped_and_a_valid_host_still_calls(tmp_path: Path) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    plugin = NetPlugin(tmp_path, tls_env(certs))
    host, port = plugin.address.rsplit(":", 1)
    idle: list[socket.socket] = []
    try:
        with secure(certs, plugin.address) as first:
            kv_pb2_grpc.KVStub(first).Put(kv_pb2.PutRequest(key="k", value=b"before"), timeout=30)
            baseline = _fds(plugin.proc.pid)
            for _ in range(FLOOD):  # connected, never a TLS byte: what a peer without a certificate can do
                idle.append(socket.create_connection((host, int(port)), timeout=30))
            # a new connection (its own subchannel), accepted after every idle one: the plugin has taken them all
            fresh = grpc.secure_channel(plugin.address, netcerts.channel_credentials(certs),
                                        options=[("grpc.ssl_target_name_override", "localhost"),
                                                 ("grpc.use_local_subchannel_pool", 1)])
            with fresh:
                kv = kv_pb2_grpc.KVStub(fresh)
                kv.Put(kv_pb2.PutRequest(key="k", value=b"during"), timeout=30)
                assert kv.Get(kv_pb2.GetRequest(key="k"), timeout=30).value == b"during"
                held = _fds(plugin.proc.pid)
            assert held <= baseline + MAX_HANDSHAKING + MARGIN, (held, baseline)
            # the dropped ones are the oldest; the plugin closed them (seen here once the FIN arrives)
            oldest = idle[:FLOOD - MAX_HANDSHAKING]
            deadline = time.monotonic() + 30
            while not all(_ended(s) for s in oldest) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert all(_ended(s) for s in oldest)
    finally:
        for s in idle:
            s.close()
        code, err = plugin.stop()
    assert code == 0, err
    assert "Too many open files" not in err and "cannot accept" not in err, err


def test_a_flood_from_one_address_drops_its_own_connections_not_a_slower_hosts(tmp_path: Path) -> None:
    # a distant host's handshake takes a round trip or two: one address flooding idle connects past the
    # cap in that time must evict its own, not the host's (here: connected first, handshaking last)

    from plugbay.core.transport import certfiles, sockets
    from plugbay.core.transport.relay import TLSRelay
    from tests.test_certfiles_reload import _served_serial
    from tests.test_relay_loop import Echo

    certs = netcerts.write_set(tmp_path / "tls")
    provider = certfiles.CertFiles(certfiles.TLSFiles(str(certs.cert_file), str(certs.key_file),
                                                      str(certs.client_ca_file)))
    echo = Echo(str(tmp_path / "echo.sock"))
    relay = TLSRelay(sockets.open_listener("tcp", "127.0.0.1:0"), ("unix", str(tmp_path / "echo.sock")),
                     provider.ssl_context, "terminate")
    port = int(relay.address[1].rpartition(":")[2])
    idle: list[socket.socket] = []
    try:
        ctx = netcerts.client_context(certs)
        slow = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=("127.0.0.2", 0))
        for _ in range(FLOOD):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=30))
        _served_serial(relay, certs)  # accepted after the flood: the relay has seen every connect before it
        with ctx.wrap_socket(slow, server_hostname="localhost") as tls:  # its handshake only now
            tls.sendall(b"x")
            assert tls.recv(1) == b"x"
    finally:
        for s in idle:
            s.close()
        relay.close()
        echo.close()
