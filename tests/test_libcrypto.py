"""AutoMTLS keys from ssl's own libcrypto (core/protocol/libcrypto.py), and the fallback to cryptography.

The certificates themselves are checked field by field in test_der.py (both
backends); here: which library is used, that a key and signature from one
backend complete real TLS handshakes with the other's, that whatever
libcrypto cannot do leaves plugbay on cryptography instead of failing, and how
the key reaches an SSLContext (an in-memory file, not a temp file).
"""

from __future__ import annotations

import ctypes.util
import os
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from plugbay.core.protocol import der, libcrypto, tls

P256, P521 = "1.2.840.10045.3.1.7", "1.3.132.0.35"


def _lib() -> libcrypto.LibCrypto:
    if not libcrypto.mapped_libcrypto():
        pytest.skip("this Python's ssl has OpenSSL linked in statically: there is no libcrypto to call")
    lib = libcrypto.load()
    assert lib is not None
    return lib


def test_the_library_used_is_the_one_ssl_loaded() -> None:
    lib = _lib()
    assert libcrypto.load() is lib  # looked for once
    paths = libcrypto.mapped_libcrypto()
    assert all(p.startswith("/") and "libcrypto" in p for p in paths)
    # every mapped libcrypto that opens is ssl's version (open_lib checks OpenSSL_version_num)
    assert [p for p in paths if libcrypto.open_lib(p) is not None]


def test_a_library_without_the_functions_or_not_there_is_refused() -> None:
    libc = ctypes.util.find_library("c")
    assert libc is not None
    assert libcrypto.open_lib(libc) is None  # loaded, but has no OpenSSL_version_num / EC_KEY_*
    assert libcrypto.open_lib("/nonexistent/libcrypto.so.3") is None
    # a library the process has not loaded is never loaded to be looked at
    _lib()
    folder = os.path.dirname(libcrypto.mapped_libcrypto()[0])
    mapped = Path("/proc/self/maps").read_text()
    absent = next((os.path.join(folder, n) for n in sorted(os.listdir(folder))
                   if n.startswith("lib") and n.endswith(".so.1") and n not in mapped), None)
    assert absent is not None, f"no shared library in {folder} that this process has not loaded"
    assert libcrypto.open_lib(absent) is None
    assert os.path.basename(absent) not in Path("/proc/self/maps").read_text()


@pytest.mark.parametrize("curve_oid", [P256, P521], ids=["p256", "p521"])
def test_a_fresh_key_signs_what_it_is_asked_to(curve_oid: str) -> None:
    size = {P256: 32, P521: 66}[curve_oid]
    seen: list[bytes] = []

    def message_for(point: bytes) -> bytes:
        seen.append(point)
        return b"to be signed " + point

    made = _lib().fresh_signed_key(curve_oid, size, message_for)
    assert made is not None
    point, secret, message, signature = made
    assert seen == [point] and message == b"to be signed " + point
    assert len(point) == 1 + 2 * size and point[0] == 4 and len(secret) == size
    curve = ec.SECP256R1() if curve_oid == P256 else ec.SECP521R1()
    private = ec.derive_private_key(int.from_bytes(secret, "big"), curve)
    assert private.public_key().public_bytes(serialization.Encoding.X962,
                                             serialization.PublicFormat.UncompressedPoint) == point
    private.public_key().verify(signature, message, ec.ECDSA(hashes.SHA256()))
    # two keys are two keys
    again = _lib().fresh_signed_key(curve_oid, size, message_for)
    assert again is not None and again[1] != secret


def test_what_libcrypto_cannot_make_is_none_and_leaves_no_error_behind() -> None:
    lib = _lib()
    dll = ctypes.CDLL(libcrypto.mapped_libcrypto()[0])
    peek, clear = dll.ERR_peek_error, dll.ERR_clear_error
    peek.restype, peek.argtypes, clear.restype, clear.argtypes = ctypes.c_ulong, [], None, []
    clear()
    # an OID OpenSSL knows that names no curve: EC_KEY_new_by_curve_name fails
    assert lib.fresh_signed_key("2.5.4.3", 32, lambda point: point) is None
    # a size that does not match the curve: the point does not fit the buffer
    assert lib.fresh_signed_key(P256, 31, lambda point: point) is None
    # an OID OpenSSL does not know at all
    assert lib.fresh_signed_key("1.2.3.4.5.6.7", 32, lambda point: point) is None
    # OpenSSL's error queue (per thread; ssl reads it to report its own errors) is left empty
    assert peek() == 0
    # and the check can see an error: a failing call of our own leaves one until cleared
    obj_txt2nid = dll.OBJ_txt2nid
    obj_txt2nid.restype, obj_txt2nid.argtypes = ctypes.c_int, [ctypes.c_char_p]
    ec_key_new = dll.EC_KEY_new_by_curve_name
    ec_key_new.restype, ec_key_new.argtypes = ctypes.c_void_p, [ctypes.c_int]
    assert ec_key_new(obj_txt2nid(b"2.5.4.3")) is None
    assert peek() != 0
    clear()


def test_without_libcrypto_cryptography_makes_the_key() -> None:
    own = tls.make_cert(P256, None)
    cert = x509.load_pem_x509_certificate(own.cert_pem)
    key = serialization.load_pem_private_key(own.key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    assert der.certificate_key(tls.pem_to_der(own.cert_pem)) == (der.EC_PUBLIC_KEY, P256)


@pytest.mark.parametrize("server_backend, client_backend", [("libcrypto", "cryptography"),
                                                            ("cryptography", "libcrypto")])
@pytest.mark.parametrize("curve_oid", [P256, P521], ids=["p256", "p521"])
def test_certificates_of_either_backend_complete_a_mutual_tls_handshake(
        server_backend: str, client_backend: str, curve_oid: str) -> None:
    def make(backend: str) -> tls.CertKey:
        return tls.make_cert(curve_oid, _lib() if backend == "libcrypto" else None)

    server_own, client_own = make(server_backend), make(client_backend)
    server_ctx = tls.server_context(server_own, client_own.cert_pem)
    client_ctx = tls.client_context(client_own, server_own.cert_pem)
    a, b = socket.socketpair()
    seen: list[object] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as conn:
                seen.append(conn.getpeercert(binary_form=True))
                conn.sendall(conn.recv(5)[::-1])
        except (OSError, ssl.SSLError) as exc:
            seen.append(exc)

    thread = threading.Thread(target=serve, name="plugbay-test-tls-server")
    thread.start()
    try:
        b.settimeout(10)
        with client_ctx.wrap_socket(b, server_hostname=tls.HOSTNAME) as conn:
            assert conn.getpeercert(binary_form=True) == server_own.cert_der
            conn.sendall(b"hello")
            assert conn.recv(5) == b"olleh"
    finally:
        thread.join(10)
        a.close()
        b.close()
    assert seen == [client_own.cert_der]


def test_key_material_is_loaded_from_memory_and_bad_material_is_reported() -> None:
    own = tls.generate_cert()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_chain(ctx, own)  # through a memfd: no temp entry (the leak check would see one)
    tls._load_chain_via_temp_file(ctx, own.cert_pem + own.key_pem)  # where there is no /proc
    other = tls.generate_cert()
    for load in (lambda: tls.load_chain(ctx, tls.CertKey(own.cert_pem, other.key_pem)),
                 lambda: tls._load_chain_via_temp_file(ctx, own.cert_pem + other.key_pem)):
        with pytest.raises(ssl.SSLError, match="KEY_VALUES_MISMATCH|key values mismatch"):
            load()


def test_threads_making_keys_at_once_each_get_their_own() -> None:
    lib = _lib()
    made: list[tls.CertKey] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(5):
            own = tls.make_cert(P256, lib)
            with lock:
                made.append(own)

    threads = [threading.Thread(target=work, name=f"plugbay-test-keys-{i}") for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(made) == 40 and len({own.key_pem for own in made}) == 40
    for own in made:
        cert = x509.load_pem_x509_certificate(own.cert_pem)
        key = serialization.load_pem_private_key(own.key_pem, None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.public_key().public_numbers() == cert.public_key().public_numbers()
        cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
