"""Provided TLS files behind serve()'s brokering front (CertFiles.ssl_context as a TLSRelay's provider, one
call per accepted connection): an unusable set on disk is read and warned about once, not per connection,
and the good set that follows is taken for the next handshake."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
from cryptography import x509

from plugbay.core.transport import certfiles, sockets
from plugbay.core.transport.relay import TLSRelay
from tests import netcerts
from tests.test_tlsrelay import echo_server  # noqa: F401  (the fixture)

FLOOD = 200


def _host_port(relay: TLSRelay) -> tuple[str, int]:
    host, _, port = relay.address[1].rpartition(":")
    return host, int(port)


def _served_serial(relay: TLSRelay, certs: netcerts.CertSet) -> int:
    """A full mTLS handshake and an echoed byte; the serial of the certificate the server presented."""
    ctx = netcerts.client_context(certs)
    with socket.create_connection(_host_port(relay), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as conn:
        conn.sendall(b"x")
        assert conn.recv(1) == b"x"
        der = conn.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number


def test_an_unusable_set_is_read_and_warned_about_once(tmp_path: Path, echo_server: str,
                                                        caplog: pytest.LogCaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    files = certfiles.TLSFiles(str(certs.cert_file), str(certs.key_file), str(certs.client_ca_file))
    provider = certfiles.CertFiles(files)
    loads: list[certfiles.TLSFiles] = []
    real_load = certfiles.load

    def counted(f: certfiles.TLSFiles) -> certfiles.LoadedTLS:
        loads.append(f)
        return real_load(f)

    monkeypatch.setattr(certfiles, "load", counted)
    relay = TLSRelay(sockets.open_listener("tcp", "127.0.0.1:0"), ("unix", echo_server), provider.ssl_context,
                     "terminate")
    try:
        first = x509.load_pem_x509_certificate(certs.cert_file.read_bytes()).serial_number
        assert _served_serial(relay, certs) == first
        # a rotation half done: the certificate half-written in place, then the new key beside it
        full = certs.cert_file.read_bytes()
        certs.cert_file.write_bytes(full[: len(full) // 2])
        new = netcerts.issue(certs.server_ca, "localhost", server=True)
        certs.key_file.write_bytes(new.key_pem)
        caplog.set_level(logging.WARNING, logger="plugbay.network.tls")
        for _ in range(FLOOD):  # connects that never finish a handshake, each one accepted
            socket.create_connection(_host_port(relay), timeout=10).close()
        # accepted after the flood, so every flooding connection met the provider before it; the old set serves
        assert _served_serial(relay, certs) == first
        warned = [r for r in caplog.records if "not usable yet" in r.getMessage()]
        assert len(warned) == 1, len(warned)
        assert len(loads) == 1
        # the rotation completes: the next handshake gets the new set
        certs.cert_file.write_bytes(new.cert_pem + certs.server_ca.cert_pem)
        assert _served_serial(relay, certs) == new.cert.serial_number
        assert provider.reloads == 1 and len(loads) == 2
        assert len([r for r in caplog.records if "not usable yet" in r.getMessage()]) == 1
    finally:
        relay.close()



def test_a_client_ca_file_with_other_text_around_its_pem_still_serves(tmp_path: Path, echo_server: str) -> None:
    # text outside a PEM block is allowed (openssl x509 -text output, a comment in another encoding);
    # the stdlib's TLS takes the CAs as str, so such bytes must not reach it
    certs = netcerts.write_set(tmp_path / "tls")
    pem = certs.client_ca_file.read_bytes()
    certs.client_ca_file.write_bytes(b"Issuer: caf\xe9 \xff\xfe\n" + pem + b"\n# trailing note \xe9\n")
    files = certfiles.TLSFiles(str(certs.cert_file), str(certs.key_file), str(certs.client_ca_file))
    provider = certfiles.CertFiles(files)
    relay = TLSRelay(sockets.open_listener("tcp", "127.0.0.1:0"), ("unix", echo_server), provider.ssl_context,
                     "terminate")
    try:
        first = x509.load_pem_x509_certificate(certs.cert_file.read_bytes()).serial_number
        assert _served_serial(relay, certs) == first
    finally:
        relay.close()


def test_a_set_that_could_not_be_read_is_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a rotation met while the process is out of descriptors says nothing of the files: the next
    # handshake reads them again (only a set whose content is wrong waits for the next change)
    import errno

    certs = netcerts.write_set(tmp_path / "tls")
    provider = certfiles.CertFiles(certfiles.TLSFiles(str(certs.cert_file), str(certs.key_file),
                                                      str(certs.client_ca_file)))
    new = netcerts.issue(certs.server_ca, "localhost", server=True)
    certs.key_file.write_bytes(new.key_pem)
    certs.cert_file.write_bytes(new.cert_pem + certs.server_ca.cert_pem)

    def out_of_descriptors(*args: object, **kwargs: object) -> object:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(certfiles, "open", out_of_descriptors, raising=False)
    assert provider.changed() is False and provider.reloads == 0
    monkeypatch.undo()
    assert provider.changed() is True and provider.reloads == 1
    assert provider.current.cert_pem.startswith(new.cert_pem)


def test_a_key_of_a_type_cryptography_does_not_know_is_a_tls_config_error(tmp_path: Path) -> None:
    certs = netcerts.write_set(tmp_path / "tls")
    certs.key_file.write_bytes(netcerts.unknown_type_key_pem())
    files = certfiles.TLSFiles(str(certs.cert_file), str(certs.key_file), str(certs.client_ca_file))
    with pytest.raises(certfiles.TLSConfigError, match="no unencrypted PEM private key"):
        certfiles.load(files)


def test_a_folder_given_for_a_file_says_so(tmp_path: Path) -> None:
    # the TLS Secret's mount folder passed as --client-ca was told "Is a directory; make it readable by this
    # process's user", advice no permission change could follow
    certs = netcerts.write_set(tmp_path / "tls")
    files = certfiles.TLSFiles(str(certs.cert_file), str(certs.key_file), str(tmp_path / "tls"))
    with pytest.raises(certfiles.TLSConfigError) as err:
        certfiles.load(files)
    assert str(err.value) == (f"the client CA file {str(tmp_path / 'tls')!r} is a folder; pass the PEM file in it with"
                              " --client-ca, client_ca_file, PLUGBAY_NETWORK_CLIENT_CA or the gateway's"
                              " PLUGBAY_GATEWAY_CLIENT_CA (in Kubernetes: the file the TLS Secret's key is"
                              " mounted as)")
