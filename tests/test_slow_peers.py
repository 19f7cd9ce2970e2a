"""The plugin side bounds connections that never complete their handshake (grpcio's own TLS server).

A real plugin serving with grpcio TLS (the host's AutoMTLS certificate is
P-256) on TCP: 50 raw connections that never speak TLS are opened before the
host's own connection; the host still connects and calls, and the plugin
closes every silent connection by itself (server_handshake_timeout_ms, set by
serve()). The OpenSSL relay's bound is tested in tests/test_tlsrelay.py.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from plugbay import Client, ClientConfig
from plugbay.core.plugin.server import SERVER_HANDSHAKE_TIMEOUT_MS
from plugbay.core.protocol.handshake import HandshakeInfo
from tests.test_mux_admission import HANDSHAKE, PLUGIN_NAME, HoldFirst, KVPlugin, closed_eventually

SILENT = 50
WAIT = SERVER_HANDSHAKE_TIMEOUT_MS / 1000 + 30.0  # generous: "closed eventually", not a timing check


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the KV plugin writes kv_<key> files in its cwd


def test_connections_that_never_speak_tls_are_closed_by_the_plugin() -> None:
    silent: list[socket.socket] = []

    def hold(info: HandshakeInfo) -> None:
        assert info.network == "tcp"
        host, port = info.address.rsplit(":", 1)
        silent.extend(socket.create_connection((host, int(port)), timeout=10) for _ in range(SILENT))

    config = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=HoldFirst(hold),
                          auto_mtls=True, env={"PLUGBAY_LISTEN": "tcp:127.0.0.1:0"}, start_timeout=20.0)
    try:
        with Client(config) as client:
            assert client.connection_mode == "grpc-tls"
            kv = client.dispense(PLUGIN_NAME)
            kv.put("k", b"v")  # the host connected while 50 silent connections were held
            assert len(silent) == SILENT
            assert closed_eventually(silent, within=WAIT) == []
            assert kv.get("k") == b"v"
    finally:
        for sock in silent:
            sock.close()
