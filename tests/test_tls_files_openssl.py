"""Provided TLS files that cryptography parses but that cannot serve: a key OpenSSL calls too weak, a chain
OpenSSL refuses, a PEM file caught half-written. serve()'s front refuses such a first set at start (a
TLSConfigError naming the file) and both sides keep the previous set through such a rotation, said once."""

from __future__ import annotations

import datetime
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from plugbay.core.transport import certfiles, sockets
from plugbay.core.transport.relay import TLSRelay
from plugbay.errors import TLSConfigError
from plugbay.network import tlsfiles
from tests import netcerts
from tests.test_certfiles_reload import _served_serial
from tests.test_tlsrelay import echo_server  # noqa: F401  (the fixture)

REPO = Path(__file__).resolve().parent.parent


def _weak_rsa_ca() -> netcerts.Issued:
    """A self-signed RSA-1024 CA certificate: cryptography parses it, OpenSSL will not put it in a chain."""
    key = rsa.generate_private_key(65537, 1024)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weak CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return netcerts._pem(cert, key)


def _rsa_1024_server(ca: netcerts.Issued) -> netcerts.Issued:
    key = rsa.generate_private_key(65537, 1024)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(ca.key, hashes.SHA256()))
    return netcerts.Issued(cert.public_bytes(serialization.Encoding.PEM),
                           key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()), cert, key)


def _files(certs: netcerts.CertSet) -> certfiles.TLSFiles:
    return certfiles.TLSFiles(str(certs.cert_file), str(certs.key_file), str(certs.client_ca_file))


def _cut(pem: bytes, whole: bytes) -> bytes:
    """``pem`` followed by the first half of ``whole``'s PEM block: a file caught mid-write."""
    return pem + whole[: len(whole) // 2]


def test_a_plugin_given_an_rsa_1024_key_refuses_to_start_naming_the_key_file(tmp_path: Path) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    weak = _rsa_1024_server(certs.server_ca)
    certs.cert_file.write_bytes(weak.cert_pem + certs.server_ca.cert_pem)
    certs.key_file.write_bytes(weak.key_pem)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUGIN_", "PLUGBAY_", "BASIC_"))}
    env.update({"PYTHONPATH": str(REPO / "src"), "PLUGBAY_NETWORK_LISTEN": "127.0.0.1:0",
                "PLUGBAY_NETWORK_CERT": str(certs.cert_file), "PLUGBAY_NETWORK_KEY": str(certs.key_file),
                "PLUGBAY_NETWORK_CLIENT_CA": str(certs.client_ca_file)})
    proc = subprocess.Popen([sys.executable, str(REPO / "examples" / "counter" / "plugin.py")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=30)
    assert line == b"", f"the plugin started with an RSA-1024 key: {line!r}"
    assert proc.returncode != 0
    assert "RSA-1024" in err.decode() and str(certs.key_file) in err.decode(), err.decode()


@pytest.mark.parametrize("case", ["a chain OpenSSL refuses, at the front's start", "an RSA-1024 key, at load"])
def test_a_first_set_that_cannot_serve_is_a_tls_config_error_naming_its_file(case: str, tmp_path: Path) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    if case.startswith("a chain"):
        leaf = netcerts.issue(certs.server_ca, "localhost", server=True)
        chain, key = leaf.cert_pem + _weak_rsa_ca().cert_pem, leaf.key_pem
        says, named = "OpenSSL refused", certs.cert_file
    else:
        weak = _rsa_1024_server(certs.server_ca)
        chain, key, says, named = weak.cert_pem, weak.key_pem, "RSA-1024", certs.key_file
    certs.cert_file.write_bytes(chain)
    certs.key_file.write_bytes(key)
    with pytest.raises(TLSConfigError, match=says) as caught:
        (certfiles.front_certs if case.startswith("a chain") else certfiles.load)(_files(certs))
    assert str(named) in str(caught.value)
    # OpenSSL's words were quoted with CPython's "(_ssl.c:3900)" inside a parenthesis of their own
    assert str(caught.value).count("(") <= 1, str(caught.value)


@pytest.mark.parametrize("rotation", ["openssl refuses the chain", "half-written chain", "half-written CA bundle"])
def test_the_front_keeps_the_old_set_through_a_rotation_that_cannot_serve(
        rotation: str, tmp_path: Path, echo_server: str, caplog: pytest.LogCaptureFixture) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    provider = certfiles.front_certs(_files(certs))
    relay = TLSRelay(sockets.open_listener("tcp", "127.0.0.1:0"), ("unix", echo_server), provider.ssl_context,
                     "terminate")
    caplog.set_level(logging.INFO, logger="plugbay.network.tls")
    try:
        first = x509.load_pem_x509_certificate(certs.cert_file.read_bytes()).serial_number
        assert _served_serial(relay, certs) == first
        new = netcerts.issue(certs.server_ca, "localhost", server=True)
        # the new client CA first, the old one being written after it: hosts the old CA signed still in
        _rotate(rotation, certs.cert_file, certs.key_file, certs.client_ca_file, new, certs.server_ca,
                certs.client_ca)
        for _ in range(3):
            assert _served_serial(relay, certs) == first
        assert provider.reloads == 0
        _warned_once_never_reloaded(caplog)
        # the rotation completes: the next handshake gets the new set
        certs.cert_file.write_bytes(new.cert_pem + certs.server_ca.cert_pem)
        certs.key_file.write_bytes(new.key_pem)
        certs.client_ca_file.write_bytes(certs.client_ca.cert_pem)
        assert _served_serial(relay, certs) == new.cert.serial_number
        assert provider.reloads == 1
    finally:
        relay.close()


@pytest.mark.parametrize("file", ["cert_file", "client_ca_file"])
def test_load_refuses_a_file_that_ends_in_a_pem_block_cut_short(file: str, tmp_path: Path) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    path = certs.cert_file if file == "cert_file" else certs.client_ca_file
    whole = path.read_bytes()
    path.write_bytes(_cut(whole, netcerts.make_ca("other").cert_pem))
    with pytest.raises(TLSConfigError, match="cut short") as caught:
        certfiles.load(_files(certs))
    assert str(path) in str(caught.value)




@pytest.mark.parametrize("rotation", ["openssl refuses the chain", "half-written chain", "half-written CA bundle"])
def test_the_host_keeps_its_last_good_set_through_a_renewal_that_cannot_serve(
        rotation: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    host = netcerts.issue(certs.client_ca, "host v1", server=False)
    cert, key, ca = tmp_path / "host.crt", tmp_path / "host.key", tmp_path / "ca.crt"
    cert.write_bytes(host.cert_pem + certs.client_ca.cert_pem)
    key.write_bytes(host.key_pem)
    ca.write_bytes(certs.server_ca.cert_pem)
    files = tlsfiles.ClientFiles(str(cert), str(key), str(ca))
    good = files.current()
    caplog.set_level(logging.INFO, logger="plugbay.network.tls")
    renewed = netcerts.issue(certs.client_ca, "host v2", server=False)
    _rotate(rotation, cert, key, ca, renewed, certs.client_ca, certs.server_ca)
    for _ in range(3):
        assert files.current() is good
    assert files.reloads == 0
    _warned_once_never_reloaded(caplog)
    # the last good set still makes a working client: a real handshake with the plugin's certificates
    server = netcerts.issue(certs.server_ca, "localhost", server=True)
    _handshake(files.current(), server, certs, tmp_path)


def _rotate(rotation: str, cert: Path, key: Path, ca: Path, new: netcerts.Issued, issuer: netcerts.Issued,
            old_ca: netcerts.Issued) -> None:
    """Write one of the rotations that cannot serve yet: ``new`` (issued by ``issuer``) with a chain OpenSSL
    refuses or cut short, or a new CA bundle cut short before ``old_ca``."""
    if rotation == "openssl refuses the chain":
        cert.write_bytes(new.cert_pem + _weak_rsa_ca().cert_pem)
        key.write_bytes(new.key_pem)
    elif rotation == "half-written chain":
        cert.write_bytes(_cut(new.cert_pem, issuer.cert_pem))
        key.write_bytes(new.key_pem)
    else:
        ca.write_bytes(_cut(netcerts.make_ca("new CA").cert_pem, old_ca.cert_pem))


def _warned_once_never_reloaded(caplog: pytest.LogCaptureFixture) -> None:
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "not usable yet" in m]) == 1, messages
    assert not [m for m in messages if "reloaded" in m], messages


def _handshake(client: tlsfiles.ClientSet, server: netcerts.Issued, certs: netcerts.CertSet, tmp: Path) -> None:
    import ssl
    import threading

    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.verify_mode = ssl.CERT_REQUIRED
    sctx.load_verify_locations(cadata=certs.client_ca.cert_pem.decode())
    (tmp / "srv.pem").write_bytes(server.cert_pem + server.key_pem)
    sctx.load_cert_chain(str(tmp / "srv.pem"))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        def serve() -> None:
            conn, _ = listener.accept()
            with sctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(tls.recv(1))

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with socket.create_connection(listener.getsockname(), timeout=10) as raw, \
                client.ssl_context().wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"x")
            assert tls.recv(1) == b"x"
        thread.join(10)
