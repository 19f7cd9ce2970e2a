"""AutoMTLS: throwaway certificates, and which TLS stack can talk to a peer.

go-plugin's AutoMTLS gives each side a fresh self-signed certificate (the
host's travels in PLUGIN_CLIENT_CERT, the plugin's in the handshake line) and
each side trusts exactly the other's. plugbay uses go-plugin's certificate
profile (CN and SAN "localhost", Organization "HashiCorp", client+server auth,
IsCA) but on curve P-256: grpcio's TLS stack (BoringSSL) cannot complete a
handshake with go-plugin's own P-521 certificates, in either direction. When
the *peer's* certificate is one grpcio cannot use, plugbay runs TLS with
Python's ssl module (OpenSSL) instead; see plugbay.core.transport.relay.
"""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from plugbay.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

# cryptography is imported where it is used: a plugin started without AutoMTLS never loads it
# (it is the largest import of the plugin side; tests/test_layers.py checks it stays out).

HOSTNAME = "localhost"

# Curves grpcio's BoringSSL build negotiates by default.
_GRPC_CURVES = ("secp256r1", "secp384r1")


@dataclass(frozen=True)
class CertKey:
    """A PEM certificate and its PEM private key."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def cert_der(self) -> bytes:
        return pem_to_der(self.cert_pem)


def generate_cert(curve: ec.EllipticCurve | None = None) -> CertKey:
    """A fresh self-signed certificate with go-plugin's AutoMTLS profile."""
    import secrets

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(curve or ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "HashiCorp"),
        x509.NameAttribute(NameOID.COMMON_NAME, HOSTNAME),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(secrets.randbits(127) + 1)
        .not_valid_before(now - datetime.timedelta(seconds=30))
        .not_valid_after(now + datetime.timedelta(hours=262980))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOSTNAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                          data_encipherment=False, key_agreement=True, key_cert_sign=True,
                          crl_sign=False, encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return CertKey(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                          serialization.NoEncryption()),
    )


def pem_to_der(pem: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    except ValueError as exc:
        raise ConfigError(f"not a PEM certificate ({exc}); pass the PEM text of one certificate") from exc


def der_to_pem(der: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    except ValueError as exc:
        raise ConfigError(f"not a DER certificate ({exc}); pass the DER bytes of one certificate") from exc


def grpc_can_use(cert_pem: bytes) -> bool:
    """Whether grpcio's own TLS can handshake with a peer holding this certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.curve.name in _GRPC_CURVES
    return True


def server_context(own: CertKey, client_ca_pem: bytes) -> ssl.SSLContext:
    """OpenSSL server side of AutoMTLS: present ``own``, require a client cert signed by the CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, own)
    ctx.load_verify_locations(cadata=client_ca_pem.decode())
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["h2"])
    return ctx


def client_context(own: CertKey, server_ca_pem: bytes) -> ssl.SSLContext:
    """OpenSSL client side of AutoMTLS: present ``own``, trust only the server's cert."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, own)
    ctx.load_verify_locations(cadata=server_ca_pem.decode())
    ctx.check_hostname = True
    ctx.set_alpn_protocols(["h2"])
    return ctx


def _load_chain(ctx: ssl.SSLContext, own: CertKey) -> None:
    import os
    import tempfile

    # ssl only loads key material from files; keep them for the blink of an eye.
    fd, path = tempfile.mkstemp(prefix="plugbay-tls-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(own.cert_pem + own.key_pem)
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)
