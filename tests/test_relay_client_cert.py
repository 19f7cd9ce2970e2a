"""The OpenSSL relay in front of a plaintext gRPC server lets in only a client holding the peer's certificate.

A go-plugin host's P-521 certificate puts the relay in front of the plugin's
gRPC server (serve()) and of every brokered server (the broker's
build_server). Behind it gRPC speaks plaintext to anyone who reaches it, so a
client that completes TLS without presenting any certificate must be dropped
before the relay dials the server: it must never see gRPC's HTTP/2 SETTINGS.
Each test first shows that a client holding the host's certificate does get
them, so a refusal is the relay's doing and not a broken probe.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import tempfile
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from plugbay.core.broker.spares import build_server
from plugbay.core.protocol import tls as tlsmod
from plugbay.core.transport.secure import MutualTLS
from tests.serverproc import PluginProc, plugins, start  # noqa: F401  (plugins is a fixture)

# RFC 9113 3.4: the client connection preface, then an empty SETTINGS frame
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_SETTINGS = 4
_REACHED = "a client with no certificate reached the plaintext gRPC server (its HTTP/2 SETTINGS came back)"
_VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


def _http2_reply(address: str, ctx: ssl.SSLContext) -> bytes:
    """Speak HTTP/2's preface through TLS to the unix socket ``address``; the first 9 bytes back (a frame
    header), or what came before the server refused or closed (b"" for a refusal at any point)."""
    got = b""
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(30)  # a hang guard only: a refusal or a reply comes at once
        raw.connect(address)
        try:
            with ctx.wrap_socket(raw, server_hostname=tlsmod.HOSTNAME) as conn:
                conn.sendall(_PREFACE)
                while len(got) < 9 and (chunk := conn.recv(9 - len(got))):
                    got += chunk
        except (ssl.SSLError, ConnectionError):
            pass  # TLS 1.2 refuses in the handshake; TLS 1.3 after it, on the client's first read
    return got


def _client(version: ssl.TLSVersion, server_pem: bytes, own: tlsmod.CertKey | None) -> ssl.SSLContext:
    if own is not None:
        ctx = tlsmod.client_context(own, server_pem)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=server_pem.decode())
        ctx.set_alpn_protocols(["h2"])
    ctx.minimum_version = ctx.maximum_version = version
    return ctx


@pytest.mark.parametrize("version", _VERSIONS, ids=["tls1.2", "tls1.3"])
def test_the_plugins_relay_refuses_a_client_without_a_certificate(plugins: list[PluginProc],
                                                                  version: ssl.TLSVersion) -> None:
    host = tlsmod.generate_cert(ec.SECP521R1())
    p = start(plugins, {"PLUGIN_CLIENT_CERT": host.cert_pem.decode()})
    info = p.handshake()
    assert info.network == "unix" and info.server_cert is not None
    server_pem = tlsmod.der_to_pem(info.server_cert)
    assert _http2_reply(info.address, _client(version, server_pem, host))[3] == _SETTINGS
    assert _http2_reply(info.address, _client(version, server_pem, None)) == b"", _REACHED
    # the plugin is still serving the host afterwards
    assert _http2_reply(info.address, _client(version, server_pem, host))[3] == _SETTINGS


@pytest.fixture
def private_dir() -> Iterator[str]:
    folder = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: unix socket paths stay under 108 bytes
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("version", _VERSIONS, ids=["tls1.2", "tls1.3"])
def test_a_brokered_servers_relay_refuses_a_client_without_a_certificate(private_dir: str,
                                                                         version: ssl.TLSVersion) -> None:
    host, plugin = tlsmod.generate_cert(ec.SECP521R1()), tlsmod.generate_cert()
    mutual = MutualTLS(plugin, host.cert_pem)
    assert mutual.needs_relay
    served, path = build_server(mutual, private_dir, os.path.join(private_dir, "served"))
    try:
        assert _http2_reply(path, _client(version, plugin.cert_pem, host))[3] == _SETTINGS
        assert _http2_reply(path, _client(version, plugin.cert_pem, None)) == b"", _REACHED
    finally:
        served.stop()
    assert not os.path.exists(path)
