"""Certificates for the network-mode tests: a CA, a server certificate for 127.0.0.1/localhost, clients."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
import ipaddress

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass
class Issued:
    cert_pem: bytes
    key_pem: bytes
    cert: x509.Certificate
    key: PrivateKey


def _key(kind: str) -> PrivateKey:
    return rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())


def _pem(cert: x509.Certificate, key: PrivateKey) -> Issued:
    return Issued(cert.public_bytes(serialization.Encoding.PEM),
                  key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()), cert, key)


def make_ca(name: str = "plugbay test CA", kind: str = "ec") -> Issued:
    key = _key(kind)
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return _pem(cert, key)


LOCALHOST = (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")))


def issue(ca: Issued, name: str, *, server: bool, kind: str = "ec", days: tuple[float, float] | None = None,
          not_before: datetime.datetime | None = None, not_after: datetime.datetime | None = None,
          sans: Sequence[x509.GeneralName] | None = None) -> Issued:
    """A leaf certificate ``ca`` signs for ``name``, for server or client auth.

    Valid from ``days[0]`` to ``days[1]`` days from now, or from ``not_before`` to ``not_after`` (by default
    from five minutes ago, for a day). Its SANs: ``sans``, by default localhost and 127.0.0.1 for a server
    and none for a client."""
    key = _key(kind)
    now = datetime.datetime.now(datetime.timezone.utc)
    if days is not None:
        not_before, not_after = now + datetime.timedelta(days=days[0]), now + datetime.timedelta(days=days[1])
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca.cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before or now - datetime.timedelta(minutes=5))
               .not_valid_after(not_after or now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                     else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    names = list(LOCALHOST if server else ()) if sans is None else list(sans)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return _pem(builder.sign(ca.key, hashes.SHA256()), key)


def load_ca(cert_file: str) -> Issued:
    """A CA from PEM files (tests/net_util.py's make_pki): the certificate, and its key beside it (.key)."""
    cert_pem, key_pem = Path(cert_file).read_bytes(), Path(cert_file).with_suffix(".key").read_bytes()
    key = serialization.load_pem_private_key(key_pem, None)
    assert isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey))
    return Issued(cert_pem, key_pem, x509.load_pem_x509_certificate(cert_pem), key)


@dataclass
class CertSet:
    """Files for one server (cert, key, client CA) and the PEMs a client needs."""

    dir: Path
    server_ca: Issued
    client_ca: Issued
    client: Issued

    @property
    def cert_file(self) -> Path:
        return self.dir / "tls.crt"

    @property
    def key_file(self) -> Path:
        return self.dir / "tls.key"

    @property
    def client_ca_file(self) -> Path:
        return self.dir / "ca.crt"


def write_set(folder: Path, kind: str = "ec") -> CertSet:
    """A fresh server CA + server cert, and a fresh client CA + client cert; the files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    server_ca, client_ca = make_ca("server CA", kind), make_ca("client CA", kind)
    server = issue(server_ca, "localhost", server=True, kind=kind)
    client = issue(client_ca, "test host", server=False, kind=kind)
    certs = CertSet(folder, server_ca, client_ca, client)
    certs.cert_file.write_bytes(server.cert_pem + server_ca.cert_pem)
    certs.key_file.write_bytes(server.key_pem)
    certs.client_ca_file.write_bytes(client_ca.cert_pem)
    for f in (certs.cert_file, certs.key_file, certs.client_ca_file):
        f.chmod(0o644)
    return certs


def channel_credentials(certs: CertSet, client: Issued | None = None):  # type: ignore[no-untyped-def]
    import grpc

    who = client if client is not None else certs.client
    return grpc.ssl_channel_credentials(root_certificates=certs.server_ca.cert_pem, private_key=who.key_pem,
                                        certificate_chain=who.cert_pem)


def client_context(certs: CertSet, client: Issued | None = None):  # type: ignore[no-untyped-def]
    """An OpenSSL client context trusting the set's server CA, presenting ``client`` (default: the set's
    client certificate), for raw TLS connections to a plugin (server name: localhost)."""
    import ssl

    who = client if client is not None else certs.client
    ctx = ssl.create_default_context(cadata=certs.server_ca.cert_pem.decode())
    pem = certs.dir / f"client-{who.cert.serial_number}.pem"  # ssl loads a chain only from a file
    pem.write_bytes(who.cert_pem + who.key_pem)
    ctx.load_cert_chain(str(pem))
    return ctx


def tls_refusal(address: str, ca: Issued, client: Issued | None, tmp: Path, tls12: bool = False) -> str:
    """Handshake with Python's ssl and read once; the TLS alert text the server answered with ('' if none).

    With TLS 1.3 the client finishes its side before the server checks the client certificate,
    so the refusal arrives on the first read (an alert, or grpcio's bare close): that is what this returns.
    """
    import socket
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=ca.cert_pem.decode())
    ctx.set_alpn_protocols(["h2"])
    if tls12:  # the server checks the client certificate inside the handshake
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if client is not None:
        pem = tmp / "probe-client.pem"
        pem.write_bytes(client.cert_pem + client.key_pem)
        ctx.load_cert_chain(str(pem))
        pem.unlink()
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                if not tls.recv(1):
                    return "closed without an alert"
        except ssl.SSLError as exc:
            return str(exc)
        except OSError as exc:
            return f"connection error: {exc}"
    return ""


def assert_tls_refuses(address: str, certs: CertSet, tmp: Path) -> None:
    """A client with a certificate from another CA, or none, is cut off in or right after the TLS
    handshake (before any HTTP/2 byte); the trusted client gets the server's HTTP/2 settings."""
    stranger = issue(make_ca("someone else"), "stranger", server=False)
    for client in (stranger, None):
        assert "SSL" in tls_refusal(address, certs.server_ca, client, tmp, tls12=True)
        # grpcio closes without an alert; OpenSSL (serve()'s brokering front) fails the handshake and
        # closes, so the client sees its alert or the close while its own data is still unread
        refusal = tls_refusal(address, certs.server_ca, client, tmp)
        assert refusal == "closed without an alert" or "ALERT" in refusal.upper() or \
            "EOF occurred in violation of protocol" in refusal, refusal
    assert tls_refusal(address, certs.server_ca, certs.client, tmp) == ""
    assert tls_refusal(address, certs.server_ca, certs.client, tmp, tls12=True) == ""


def unknown_type_key_pem() -> bytes:
    """A well-formed PKCS#8 private key of an algorithm cryptography does not know (OID 1.2.3.4), as an
    SM2 or GOST key reads to it: loading it raises UnsupportedAlgorithm, not ValueError."""
    import base64

    def tlv(tag: int, body: bytes) -> bytes:
        return bytes([tag, len(body)]) + body

    der = tlv(0x30, tlv(0x02, b"\x00") + tlv(0x30, tlv(0x06, bytes.fromhex("2a0304"))) + tlv(0x04, b"\x01\x02\x03"))
    return b"-----BEGIN PRIVATE KEY-----\n" + base64.encodebytes(der) + b"-----END PRIVATE KEY-----\n"
