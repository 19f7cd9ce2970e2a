"""plugbay's own DER for AutoMTLS certificates, checked against cryptography's full X.509 parser."""

from __future__ import annotations

import datetime
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from plugbay.core.protocol import der, libcrypto, tls
from plugbay.errors import ConfigError


@pytest.mark.parametrize("backend", ["libcrypto", "cryptography"])
@pytest.mark.parametrize("curve", [None, ec.SECP384R1(), ec.SECP521R1()], ids=["p256", "p384", "p521"])
def test_generated_certificate_has_go_plugins_profile(curve: ec.EllipticCurve | None, backend: str) -> None:
    # the key and signature come from ssl's own libcrypto, or from cryptography when that cannot be used
    if backend == "libcrypto":
        if not libcrypto.mapped_libcrypto():
            pytest.skip("this Python's ssl has OpenSSL linked in statically: there is no libcrypto to call")
        assert libcrypto.load() is not None
        own = tls.generate_cert(curve)
    else:
        own = tls.make_cert(next(o for o, n in der.CURVES.items() if n == (curve or ec.SECP256R1()).name), None)
    cert = x509.load_pem_x509_certificate(own.cert_pem)
    key = serialization.load_pem_private_key(own.key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == (curve or ec.SECP256R1()).name
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    # self-signed with ECDSA/SHA-256, by the key that comes with it
    assert cert.signature_algorithm_oid == x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256
    key.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    expected_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "HashiCorp"),
                               x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    assert cert.subject == cert.issuer == expected_name
    assert cert.version == x509.Version.v3 and cert.serial_number > 0
    now = datetime.datetime.now(datetime.timezone.utc)
    assert cert.not_valid_before_utc < now < cert.not_valid_after_utc
    assert cert.not_valid_after_utc.year >= 2050  # GeneralizedTime, 262980 hours like go-plugin
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["localhost"]
    basic = ext.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length is None
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and usage.value.key_encipherment
    assert usage.value.key_agreement and usage.value.key_cert_sign and not usage.value.crl_sign
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    # canonical DER and the usual PEM forms: re-encoding by cryptography changes nothing
    assert cert.public_bytes(serialization.Encoding.PEM) == own.cert_pem
    assert key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()) == own.key_pem
    assert tls.pem_to_der(own.cert_pem) == cert.public_bytes(serialization.Encoding.DER)
    assert tls.der_to_pem(tls.pem_to_der(own.cert_pem)) == own.cert_pem
    tls.server_context(own, own.cert_pem)  # OpenSSL loads the pair


def test_each_certificate_is_fresh() -> None:
    a, b = tls.generate_cert(), tls.generate_cert()
    assert a.key_pem != b.key_pem
    assert x509.load_pem_x509_certificate(a.cert_pem).serial_number != \
        x509.load_pem_x509_certificate(b.cert_pem).serial_number


def test_an_unsupported_curve_is_refused_with_the_curves_to_use() -> None:
    with pytest.raises(ConfigError, match="not secp256k1; pass ec.SECP256R1"):
        tls.generate_cert(ec.SECP256K1())


def _foreign_cert(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "peer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(7).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1)))
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def test_the_peer_key_decides_between_grpcio_and_the_relay() -> None:
    # certificates plugbay did not write (v1, other key types), read by plugbay's DER reader
    assert tls.grpc_can_use(_foreign_cert(ec.generate_private_key(ec.SECP256R1())))
    assert tls.grpc_can_use(_foreign_cert(ec.generate_private_key(ec.SECP384R1())))
    assert not tls.grpc_can_use(_foreign_cert(ec.generate_private_key(ec.SECP521R1())))
    assert not tls.grpc_can_use(_foreign_cert(ec.generate_private_key(ec.SECP256K1())))
    assert tls.grpc_can_use(_foreign_cert(rsa.generate_private_key(65537, 2048)))
    assert tls.grpc_can_use(_foreign_cert(ed25519.Ed25519PrivateKey.generate()))
    rsa_der = tls.pem_to_der(_foreign_cert(rsa.generate_private_key(65537, 2048)))
    assert der.certificate_key(rsa_der) == ("1.2.840.113549.1.1.1", None)  # long-form lengths


def test_the_first_certificate_of_a_pem_is_the_one_read() -> None:
    first, second = tls.generate_cert().cert_pem, tls.generate_cert().cert_pem
    assert tls.pem_to_der(b"a label\n" + first + second) == tls.pem_to_der(first)
    assert ssl.PEM_cert_to_DER_cert(first.decode()) == tls.pem_to_der(first)


@pytest.mark.parametrize("pem, why", [
    (b"", "no BEGIN/END CERTIFICATE lines"),
    (b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n", "bad length"),
    (b"-----BEGIN CERTIFICATE-----\nno*pe\n-----END CERTIFICATE-----\n", "Non-base64|Only base64"),
    (b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n", "not a Certificate"),
    (b"-----BEGIN CERTIFICATE-----\nMAUwAzAB\n-----END CERTIFICATE-----\n", "longer than its container"),
])
def test_a_bad_pem_says_what_to_pass(pem: bytes, why: str) -> None:
    with pytest.raises(ConfigError, match=f"not a PEM certificate.*({why}).*; pass the PEM text of one"):
        tls.pem_to_der(pem)


def test_bad_der_is_refused_however_it_is_broken() -> None:
    good = tls.pem_to_der(tls.generate_cert().cert_pem)
    for bad in (b"", good[:-1], good + b"\x00", b"\x31" + good[1:], good[:2] + b"\x30\x00" * 3,
                b"\x30\x85\x00\x00\x00\x00\x00", b"\x30\x80\x00\x00"):
        with pytest.raises(ValueError):
            der.certificate_key(bad)
        with pytest.raises(ConfigError, match="not a DER certificate .*; pass the DER bytes of one certificate"):
            tls.der_to_pem(bad)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 255, 256, 70000])
def test_lengths_round_trip_in_short_and_long_form(size: int) -> None:
    element = der.tlv(der.OCTET_STRING, b"x" * size)
    assert der.read(element) == (der.OCTET_STRING, b"x" * size, len(element))


@pytest.mark.parametrize("dotted", ["1.2.840.10045.3.1.7", "1.3.132.0.35", "2.5.29.17", "1.3.6.1.4.1.311.21.20",
                                    "1.2.3.4294967295"])
def test_oids_round_trip(dotted: str) -> None:
    tag, content, _ = der.read(der.oid(dotted))
    assert tag == der.OID and der.decode_oid(content) == dotted


def test_integers_keep_their_sign_bit_clear() -> None:
    assert der.integer(0) == b"\x02\x01\x00"
    assert der.integer(127) == b"\x02\x01\x7f"
    assert der.integer(128) == b"\x02\x02\x00\x80"
    assert der.integer(2**127) == b"\x02\x11\x00\x80" + b"\x00" * 15


@pytest.mark.parametrize("hex_content, dotted", [
    ("2a8648ce3d0201", "1.2.840.10045.2.1"),  # id-ecPublicKey
    ("2b81040023", "1.3.132.0.35"),  # secp521r1
    ("8837", "2.999"),  # X.690 8.19.5's example: a first subidentifier over 80
])
def test_oids_decode_as_x690_says(hex_content: str, dotted: str) -> None:
    from plugbay.core.protocol.der import decode_oid

    assert decode_oid(bytes.fromhex(hex_content)) == dotted


def test_an_oid_cut_inside_a_subidentifier_is_malformed() -> None:
    from plugbay.core.protocol.der import decode_oid

    with pytest.raises(ValueError, match="inside a subidentifier"):
        decode_oid(bytes.fromhex("551d91"))


def test_an_oversized_oid_is_refused_before_it_is_decoded() -> None:
    # a peer's certificate is untrusted: decoding one huge subidentifier costs time quadratic in
    # its length (a 48 KB one took a second of CPU), so length is checked first
    from plugbay.core.protocol.der import decode_oid

    with pytest.raises(ValueError, match="at most 128"):
        decode_oid(b"\xff" * 48_000 + b"\x01")
    assert decode_oid(bytes.fromhex("2a8648ce3d030107")) == "1.2.840.10045.3.1.7"  # P-256's own
