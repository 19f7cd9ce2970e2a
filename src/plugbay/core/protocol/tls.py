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

import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from plugbay.core.protocol import der
from plugbay.core.protocol.records import Frozen
from plugbay.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

    from plugbay.core.protocol import libcrypto

# cryptography is imported where it is used: a plugin never loads it (it is the largest import
# of the plugin side; tests/test_layers.py checks it stays out) unless ssl's own libcrypto cannot
# make the AutoMTLS key (core/protocol/libcrypto.py), and then only its ``ec`` module (the
# certificate itself is DER written by plugbay).

HOSTNAME = "localhost"

# Curves grpcio's BoringSSL build negotiates by default.
_GRPC_CURVES = ("secp256r1", "secp384r1")


class CertKey(Frozen):
    """A PEM certificate and its PEM private key."""

    _fields = ("cert_pem", "key_pem")
    cert_pem: bytes
    key_pem: bytes

    def __init__(self, cert_pem: bytes, key_pem: bytes) -> None:
        self._set(cert_pem=cert_pem, key_pem=key_pem)

    def __repr__(self) -> str:
        # a repr reaches logs and tracebacks: the private key must not
        return f"CertKey(cert_pem=<{len(self.cert_pem)} bytes>, key_pem=<hidden>)"

    @property
    def cert_der(self) -> bytes:
        return pem_to_der(self.cert_pem)


def generate_cert(curve: ec.EllipticCurve | None = None) -> CertKey:
    """A fresh self-signed certificate with go-plugin's AutoMTLS profile (ECDSA, SHA-256).

    ``curve`` is P-256 by default; P-384 and P-521 are accepted too (tests use P-521
    to stand in for a Go peer). The key and the signature come from the OpenSSL
    libcrypto ssl already loaded (core/protocol/libcrypto.py), else from
    cryptography's ``ec`` module; the certificate is written with
    plugbay.core.protocol.der (see there why).
    """
    from plugbay.core.protocol import libcrypto

    name = curve.name if curve is not None else "secp256r1"
    curve_oid = next((o for o, n in der.CURVES.items() if n == name), None)
    if curve_oid is None:
        raise ConfigError(f"AutoMTLS certificates use a NIST curve (P-256, P-384 or P-521), not {name};"
                          " pass ec.SECP256R1(), ec.SECP384R1() or ec.SECP521R1()")
    return make_cert(curve_oid, libcrypto.load())


def make_cert(curve_oid: str, lib: libcrypto.LibCrypto | None) -> CertKey:
    """generate_cert's work on a named curve (an OID of der.CURVES): with ``lib``, else (or if it fails)
    cryptography."""
    size = _FIELD_BYTES[der.CURVES[curve_oid]]

    def tbs_for(point: bytes) -> bytes:
        return _tbs(curve_oid, point)

    made = lib.fresh_signed_key(curve_oid, size, tbs_for) if lib is not None else None
    point, secret, tbs, signature = made if made is not None else _cryptography_key(curve_oid, size, tbs_for)
    cert = der.seq(tbs, der.seq(der.oid(_ECDSA_SHA256)), der.bit_string(signature))
    private = der.seq(der.integer(1), der.tlv(der.OCTET_STRING, secret),  # RFC 5915 ECPrivateKey
                      der.tlv(0xA0, der.oid(curve_oid)), der.tlv(0xA1, der.bit_string(point)))
    return CertKey(der.pem("CERTIFICATE", cert), der.pem("EC PRIVATE KEY", private))


def _tbs(curve_oid: str, point: bytes) -> bytes:
    """The TBSCertificate of go-plugin's AutoMTLS profile for the public ``point``."""
    import os
    import time

    now = time.time()
    name = der.seq(_name_part("2.5.4.10", "HashiCorp"), _name_part("2.5.4.3", HOSTNAME))
    return der.seq(
        der.tlv(0xA0, der.integer(2)),  # v3
        der.integer((int.from_bytes(os.urandom(16), "big") >> 1) + 1),  # positive, 127 bits at most
        der.seq(der.oid(_ECDSA_SHA256)),
        name,
        der.seq(_time(now - 30), _time(now + 262980 * 3600)),  # go-plugin's validity
        name,
        der.seq(der.seq(der.oid(der.EC_PUBLIC_KEY), der.oid(curve_oid)), der.bit_string(point)),
        der.tlv(0xA3, der.seq(
            _extension("2.5.29.17", der.seq(der.tlv(0x82, HOSTNAME.encode()))),  # SAN dNSName
            _extension("2.5.29.19", der.seq(der.tlv(der.BOOLEAN, b"\xff")), critical=True),  # CA
            # digitalSignature, keyEncipherment, keyAgreement, keyCertSign (bits 0, 2, 4, 5)
            _extension("2.5.29.15", der.bit_string(b"\xac", unused_bits=2), critical=True),
            _extension("2.5.29.37", der.seq(der.oid("1.3.6.1.5.5.7.3.2"), der.oid("1.3.6.1.5.5.7.3.1"))),
        )),
    )


def _cryptography_key(curve_oid: str, size: int,
                      message_for: Callable[[bytes], bytes]) -> tuple[bytes, bytes, bytes, bytes]:
    """LibCrypto.fresh_signed_key's result made with cryptography's ``ec`` module (the fallback)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    curves: dict[str, Callable[[], ec.EllipticCurve]] = {
        "secp256r1": ec.SECP256R1, "secp384r1": ec.SECP384R1, "secp521r1": ec.SECP521R1}
    key = ec.generate_private_key(curves[der.CURVES[curve_oid]]())
    numbers = key.public_key().public_numbers()
    point = b"\x04" + numbers.x.to_bytes(size, "big") + numbers.y.to_bytes(size, "big")
    message = message_for(point)
    signature = key.sign(message, _ecdsa_sha256())
    return point, key.private_numbers().private_value.to_bytes(size, "big"), message, signature


_FIELD_BYTES = {"secp256r1": 32, "secp384r1": 48, "secp521r1": 66}
_ECDSA_SHA256 = "1.2.840.10045.4.3.2"


def _ecdsa_sha256() -> ec.ECDSA:
    """``ec.ECDSA(hashes.SHA256())`` without the import its constructor makes.

    ECDSA's constructor loads cryptography's whole OpenSSL backend module (ciphers,
    RSA padding...: ~10 ms of an AutoMTLS start) only to check that deterministic
    signing is supported, which randomized ECDSA does not use. The subclass gives
    the key what ``sign`` reads, the two public properties, and skips that check.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    class RandomizedECDSA(ec.ECDSA):
        def __init__(self) -> None:  # no super().__init__(): see above
            self._digest = hashes.SHA256()

        @property
        def algorithm(self) -> hashes.HashAlgorithm:
            return self._digest

        @property
        def deterministic_signing(self) -> bool:
            return False

    return RandomizedECDSA()


def _name_part(attribute: str, value: str) -> bytes:
    return der.tlv(der.SET, der.seq(der.oid(attribute), der.tlv(der.UTF8_STRING, value.encode())))


def _time(epoch: float) -> bytes:
    """RFC 5280 Time: UTCTime through 2049, GeneralizedTime from 2050."""
    import time

    moment = time.gmtime(epoch)
    if moment.tm_year < 2050:
        return der.tlv(der.UTC_TIME, time.strftime("%y%m%d%H%M%SZ", moment).encode())
    return der.tlv(der.GENERALIZED_TIME, time.strftime("%Y%m%d%H%M%SZ", moment).encode())


def _extension(extension_oid: str, value: bytes, critical: bool = False) -> bytes:
    flag = der.tlv(der.BOOLEAN, b"\xff") if critical else b""
    return der.seq(der.oid(extension_oid), flag, der.tlv(der.OCTET_STRING, value))


def pem_to_der(pem: bytes) -> bytes:
    """The DER bytes of a PEM certificate; ConfigError when it is not one."""
    return der.pem_to_der(pem)


def der_to_pem(der_bytes: bytes) -> bytes:
    """The PEM text of a DER certificate; ConfigError when it is not one."""
    return der.der_to_pem(der_bytes)


def grpc_can_use(cert_pem: bytes) -> bool:
    """Whether grpcio's own TLS can handshake with a peer holding this certificate."""
    algorithm, curve = der.certificate_key(pem_to_der(cert_pem))
    if algorithm == der.EC_PUBLIC_KEY:
        return der.CURVES.get(curve or "") in _GRPC_CURVES
    return True


def server_context(own: CertKey, client_ca_pem: bytes, ctx: ssl.SSLContext | None = None) -> ssl.SSLContext:
    """OpenSSL server side of AutoMTLS: present ``own``, require a client cert signed by the CA.

    ``ctx``: a fresh ``SSLContext(PROTOCOL_TLS_SERVER)`` to set up (see :func:`early_server_context`).
    """
    ctx = ctx if ctx is not None else ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_chain(ctx, own)
    ctx.load_verify_locations(cadata=client_ca_pem.decode())
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["h2"])
    # No TLS 1.3 session tickets: a go-plugin host never resumes, and plugbay resumes only
    # through an originating relay, which dials Go peers (a plugbay plugin's P-256 certificate
    # is served by grpcio); OpenSSL would make two per handshake (~1 ms) before the first call.
    ctx.num_tickets = 0
    return ctx


def early_server_context() -> Callable[[], ssl.SSLContext]:
    """Start making a bare server ``SSLContext`` on a thread; the returned call waits for it.

    A process's first SSLContext costs 3-10 ms inside OpenSSL with the GIL released.
    A plugin starting AutoMTLS behind the relay makes it while its main thread
    imports cryptography and signs its certificate, instead of after.
    """
    import threading

    made: list[ssl.SSLContext] = []
    thread = threading.Thread(target=lambda: made.append(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)),
                              name="plugbay-tls-context", daemon=True)
    thread.start()

    def result() -> ssl.SSLContext:
        thread.join()
        return made[0] if made else ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

    return result


def client_context(own: CertKey, server_ca_pem: bytes) -> ssl.SSLContext:
    """OpenSSL client side of AutoMTLS: present ``own``, trust only the server's cert."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_chain(ctx, own)
    ctx.load_verify_locations(cadata=server_ca_pem.decode())
    ctx.check_hostname = True
    ctx.set_alpn_protocols(["h2"])
    return ctx


def load_chain(ctx: ssl.SSLContext, own: CertKey) -> None:
    """Give ``ctx`` our certificate and key; ssl only loads key material from a file name."""
    import os

    pem = own.cert_pem + own.key_pem
    # An in-memory file: the key never touches a disk, and no temp entry is made.
    memfd_create = getattr(os, "memfd_create", None)  # Linux
    if memfd_create is not None:
        fd = memfd_create("plugbay-tls", os.MFD_CLOEXEC)
        try:
            if os.write(fd, pem) == len(pem):
                ctx.load_cert_chain(f"/proc/self/fd/{fd}")
                return
        except ssl.SSLError:
            raise  # the key material itself is bad
        except OSError:
            pass  # no /proc here: a temp file then
        finally:
            os.close(fd)
    _load_chain_via_temp_file(ctx, pem)


def _load_chain_via_temp_file(ctx: ssl.SSLContext, pem: bytes) -> None:
    import os
    import tempfile

    fd, path = tempfile.mkstemp(prefix="plugbay-tls-")  # for the blink of an eye
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)
