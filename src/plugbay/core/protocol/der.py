"""Just enough DER for AutoMTLS certificates, so that a plugin never loads cryptography.x509.

cryptography's x509 package is the largest import of an AutoMTLS start (its
name parser, extensions, verification and serialization modules, ~100 ms of
CPU), yet plugbay needs only three things from it: write one fixed
certificate profile, check that a peer's certificate is a well-formed
Certificate, and read the curve of its public key. This module does those
with DER (X.690) directly; the keys, the signature and the actual
verification stay with OpenSSL (cryptography's ``ec`` for the key and the
signature, ssl/grpcio for every TLS handshake, which verifies the peer's
certificate fully).
"""

from __future__ import annotations

import base64
import binascii

from plugbay.errors import ConfigError

SEQUENCE, SET, INTEGER, BIT_STRING, OCTET_STRING, OID, BOOLEAN = 0x30, 0x31, 0x02, 0x03, 0x04, 0x06, 0x01
UTF8_STRING, UTC_TIME, GENERALIZED_TIME = 0x0C, 0x17, 0x18

PEM_HEADER = "-----BEGIN CERTIFICATE-----"
PEM_FOOTER = "-----END CERTIFICATE-----"

EC_PUBLIC_KEY = "1.2.840.10045.2.1"
# named curves by OID, with the names OpenSSL and cryptography give them
CURVES = {"1.2.840.10045.3.1.7": "secp256r1", "1.3.132.0.34": "secp384r1", "1.3.132.0.35": "secp521r1"}


def tlv(tag: int, content: bytes) -> bytes:
    """One DER element: tag, definite length, content."""
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + content


def seq(*items: bytes) -> bytes:
    return tlv(SEQUENCE, b"".join(items))


def integer(value: int) -> bytes:
    """A non-negative INTEGER (a leading zero keeps the sign bit clear)."""
    return tlv(INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def oid(dotted: str) -> bytes:
    first, second, *rest = (int(p) for p in dotted.split("."))
    out = bytearray([first * 40 + second])
    for arc in rest:
        chunk = [arc & 0x7F]
        while arc > 0x7F:
            arc >>= 7
            chunk.append(0x80 | (arc & 0x7F))
        out += bytes(reversed(chunk))
    return tlv(OID, bytes(out))


def bit_string(data: bytes, unused_bits: int = 0) -> bytes:
    return tlv(BIT_STRING, bytes((unused_bits,)) + data)


def read(data: bytes, pos: int = 0) -> tuple[int, bytes, int]:
    """(tag, content, end) of the element at ``pos``; ValueError when it does not fit in ``data``."""
    if pos + 2 > len(data):
        raise ValueError("truncated element")
    tag, first = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:  # high tag numbers: no certificate field plugbay reads uses them
        raise ValueError("a high-tag-number element")
    pos += 2
    if first & 0x80:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise ValueError("bad length")
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    else:
        length = first
    if pos + length > len(data):
        raise ValueError("element longer than its container")
    return tag, data[pos:pos + length], pos + length


def children(content: bytes) -> list[tuple[int, bytes]]:
    """The (tag, content) elements a constructed element holds, which must fill it exactly."""
    out, pos = [], 0
    while pos < len(content):
        tag, inner, pos = read(content, pos)
        out.append((tag, inner))
    return out


_MAX_OID = 128  # real ones are under 30 bytes (a UUID OID, 2.25.N, is about 20)


def decode_oid(content: bytes) -> str:
    """X.690 8.19: base-128 subidentifiers; the first one holds the first two arcs."""
    if not content:
        raise ValueError("empty OID")
    if len(content) > _MAX_OID:  # decoding is quadratic in a subidentifier's length
        raise ValueError(f"an OID of {len(content)} bytes (at most {_MAX_OID})")
    subids: list[int] = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            subids.append(value)
            value = 0
    if content[-1] & 0x80:
        raise ValueError("an OID ending inside a subidentifier")
    first = subids[0]
    arcs = [min(first // 40, 2), first - 40 * min(first // 40, 2), *subids[1:]]
    return ".".join(map(str, arcs))


def certificate_key(der: bytes) -> tuple[str, str | None]:
    """(public key algorithm OID, named curve OID or None) of a DER Certificate; ValueError if malformed.

    Checks the outline RFC 5280 gives every certificate: SEQUENCE { tbsCertificate
    SEQUENCE, signatureAlgorithm SEQUENCE, signatureValue BIT STRING }, nothing after it.
    """
    tag, content, end = read(der)
    if tag != SEQUENCE or end != len(der):
        raise ValueError("not one DER SEQUENCE")
    parts = children(content)
    if [t for t, _ in parts] != [SEQUENCE, SEQUENCE, BIT_STRING]:
        raise ValueError("not a Certificate (tbsCertificate, signatureAlgorithm, signatureValue)")
    tbs = children(parts[0][1])
    fields = tbs[1:] if tbs and tbs[0][0] == 0xA0 else tbs  # [0] version is optional (v1)
    # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, ...
    if len(fields) < 6 or fields[0][0] != INTEGER or fields[5][0] != SEQUENCE:
        raise ValueError("not a TBSCertificate")
    spki = children(fields[5][1])
    if len(spki) != 2 or spki[0][0] != SEQUENCE or spki[1][0] != BIT_STRING:
        raise ValueError("not a SubjectPublicKeyInfo")
    algorithm = children(spki[0][1])
    if not algorithm or algorithm[0][0] != OID:
        raise ValueError("no public key algorithm")
    curve = decode_oid(algorithm[1][1]) if len(algorithm) > 1 and algorithm[1][0] == OID else None
    return decode_oid(algorithm[0][1]), curve


def handshake_cert(field: str) -> bytes:
    """The certificate of a handshake line's SERVER-CERT field as go-plugin's host reads it (unpadded base64
    DER: base64.RawStdEncoding, '=' padding refused, '\\r' and '\\n' skipped), checked whole; a ValueError
    says what the field is not."""
    if "=" in field:
        raise ValueError(f"server certificate has base64 padding ('=' at offset {field.index('=')}), which"
                         " go-plugin's host refuses (base64.RawStdEncoding); print it without the '='")
    field = field.replace("\r", "").replace("\n", "")
    try:
        der = base64.b64decode(field + "=" * (-len(field) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("server certificate is not valid base64") from None
    check_server_cert(der)
    return der


def check_server_cert(der: bytes) -> None:
    """ValueError unless ``der`` is a whole DER X.509 certificate: a plugin's announced one, from its
    handshake line or a reattach config's handshake facts (a TLS dial with a broken one failed late, as
    a bare ssl.SSLError or a wait for the whole start timeout)."""
    import ssl

    try:
        certificate_key(der)  # its outline (the curve the transport needs)
        # and all of it, by OpenSSL (no cryptography import), so junk inside a right outline fails here too
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=der)
    except (ValueError, ssl.SSLError):
        raise ValueError("server certificate is not a DER X.509 certificate") from None


def pem_to_der(pem: bytes) -> bytes:
    """The DER bytes of the one certificate in ``pem``, checked to be a well-formed Certificate."""
    text = pem.decode("ascii", errors="replace")
    start = text.find(PEM_HEADER)
    end = text.find(PEM_FOOTER, start)
    if start < 0 or end < 0:
        raise ConfigError("not a PEM certificate (no BEGIN/END CERTIFICATE lines); pass the PEM text of"
                          " one certificate")
    body = "".join(text[start + len(PEM_HEADER):end].split())  # the first certificate, as OpenSSL reads it
    try:
        der = base64.b64decode(body, validate=True)
        certificate_key(der)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"not a PEM certificate ({exc}); pass the PEM text of one certificate") from None
    return der


def der_to_pem(der: bytes) -> bytes:
    """PEM text for a DER certificate (64-column base64, as OpenSSL writes it), checked first."""
    try:
        certificate_key(der)
    except ValueError as exc:
        raise ConfigError(f"not a DER certificate ({exc}); pass the DER bytes of one certificate") from None
    return pem("CERTIFICATE", der)


def pem(label: str, der: bytes) -> bytes:
    text = base64.b64encode(der).decode("ascii")
    lines = [text[i:i + 64] for i in range(0, len(text), 64)]
    return ("\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"]) + "\n").encode("ascii")
