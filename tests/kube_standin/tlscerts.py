"""A throwaway CA with a server certificate for 127.0.0.1 and a client certificate (the stand-in's TLS mode)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


@dataclass(frozen=True)
class ClusterCerts:
    ca: Pem
    server: Pem  # SANs 127.0.0.1 and localhost
    client: Pem  # CN plugbay-host, signed by the same CA


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey,
           ca: bool, usage: x509.ObjectIdentifier | None = None) -> bytes:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
    return builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_cluster_certs() -> ClusterCerts:
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca_name = _name("standin-ca")
    ca = _issue("standin-ca", ca_key, ca_name, ca_key, ca=True)
    server = _issue("standin-apiserver", server_key, ca_name, ca_key, False, ExtendedKeyUsageOID.SERVER_AUTH)
    client = _issue("plugbay-host", client_key, ca_name, ca_key, False, ExtendedKeyUsageOID.CLIENT_AUTH)
    return ClusterCerts(Pem(ca, _key_pem(ca_key)), Pem(server, _key_pem(server_key)),
                        Pem(client, _key_pem(client_key)))
