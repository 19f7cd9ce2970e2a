"""EC keys and ECDSA signatures from the OpenSSL libcrypto that Python's ssl module already loaded.

An AutoMTLS start needs one fresh key and one signature (the certificate itself
is plugbay's DER, core/protocol/der.py). Importing cryptography's ``ec`` module
for them costs 15-20 ms (its Rust extension, cffi, OIDs, hashes), while the
process already holds an OpenSSL libcrypto: the one ``_ssl`` is linked to.
This module calls that library through ctypes (about 3 ms to import) with the
EC_KEY API, which OpenSSL 1.1 and 3.x both export.

Everything here is best effort by design: when the library is not mapped (a
Python with OpenSSL linked in statically), is not the version ssl reports,
lacks a symbol (OpenSSL built without its deprecated APIs) or any call fails,
:meth:`LibCrypto.fresh_signed_key` and :func:`load` return None and the caller
(core/protocol/tls.py) uses cryptography instead. Every object made is freed,
every return value checked, and a failure clears OpenSSL's error queue, which
ssl reads when it reports its own errors.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from typing import Any

_UNCOMPRESSED = 4  # POINT_CONVERSION_UNCOMPRESSED
_SHA256_BYTES = 32

# load()'s result, once looked for. No lock: two threads racing both find the same library
# (the first answer is kept), and a lock held across a fork() would hang the child here.
_found: list[LibCrypto | None] = []


class LibCrypto:
    """The few libcrypto functions an AutoMTLS key needs, each with its C prototype declared."""

    def __init__(self, functions: dict[str, Any]) -> None:
        self._f = functions

    def fresh_signed_key(self, curve_oid: str, size: int,
                         message_for: Callable[[bytes], bytes]) -> tuple[bytes, bytes, bytes, bytes] | None:
        """A fresh key on the named curve, and an ECDSA-SHA256 signature by it.

        ``size`` is the curve's field size in bytes; ``message_for(point)`` gives
        what to sign once the public point (uncompressed, ``04 || X || Y``) is
        known. Returns (point, private scalar, message, DER signature), or None
        when libcrypto failed anywhere (the caller then uses cryptography).
        """
        import ctypes

        f = self._f
        nid = f["OBJ_txt2nid"](curve_oid.encode())
        key = f["EC_KEY_new_by_curve_name"](nid) if nid > 0 else None
        if not key:
            f["ERR_clear_error"]()
            return None
        try:
            if f["EC_KEY_generate_key"](key) != 1:
                return None
            group, public = f["EC_KEY_get0_group"](key), f["EC_KEY_get0_public_key"](key)
            private = f["EC_KEY_get0_private_key"](key)
            if not (group and public and private):
                return None
            point_len = 1 + 2 * size
            point_buf = ctypes.create_string_buffer(point_len)
            if f["EC_POINT_point2oct"](group, public, _UNCOMPRESSED, point_buf, point_len, None) != point_len:
                return None
            secret_buf = ctypes.create_string_buffer(size)
            if f["BN_bn2binpad"](private, secret_buf, size) != size:
                return None
            point = point_buf.raw
            message = message_for(point)
            digest = ctypes.create_string_buffer(_SHA256_BYTES)
            digest_len = ctypes.c_uint(0)
            md = f["EVP_sha256"]()
            if not md or f["EVP_Digest"](message, len(message), digest, ctypes.byref(digest_len), md, None) != 1 \
                    or digest_len.value != _SHA256_BYTES:
                return None
            sig_max = f["ECDSA_size"](key)
            if sig_max <= 0:
                return None
            sig_buf = ctypes.create_string_buffer(sig_max)
            sig_len = ctypes.c_uint(0)
            if f["ECDSA_sign"](0, digest, _SHA256_BYTES, sig_buf, ctypes.byref(sig_len), key) != 1 \
                    or not 0 < sig_len.value <= sig_max:
                return None
            return point, secret_buf.raw, message, sig_buf.raw[:sig_len.value]
        finally:
            f["EC_KEY_free"](key)
            f["ERR_clear_error"]()  # a failed call above left its reason on this thread's queue


def load() -> LibCrypto | None:
    """ssl's own libcrypto (looked for once per process), or None when it cannot be used here."""
    if not _found:
        _found.append(_find())
    return _found[0]


def _find() -> LibCrypto | None:
    # By its soname first: the dynamic linker hands back the library _ssl already loaded (no
    # file search); the version check in open_lib makes sure it is that one. Only if that fails,
    # every libcrypto actually mapped into the process (reading /proc/self/maps costs ~1 ms).
    major, minor = ssl.OPENSSL_VERSION_INFO[:2]
    soname = f"libcrypto.so.{major}" if major >= 3 else f"libcrypto.so.{major}.{minor}"
    lib = open_lib(soname)
    for path in mapped_libcrypto() if lib is None else ():
        lib = open_lib(path)
        if lib is not None:
            break
    return lib


def mapped_libcrypto() -> list[str]:
    """Paths of the libcrypto shared objects mapped into this process (``_ssl`` maps its own)."""
    import _ssl  # noqa: F401  (ssl imported it already; this names why the library is mapped)

    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            lines = maps.read().splitlines()
    except OSError:  # not Linux, or no /proc: cryptography does the work
        return []
    paths: list[str] = []
    for line in lines:
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5].startswith("/"):
            path = fields[5]
            name = os.path.basename(path)
            if name.startswith("libcrypto") and ".so" in name and path not in paths:
                paths.append(path)
    return paths


def open_lib(path: str) -> LibCrypto | None:
    """The libcrypto at ``path`` with every function declared, or None when it is not ssl's OpenSSL 1.1/3.x.

    ``path`` is a soname or a path (:func:`mapped_libcrypto`) of a library this process has
    already loaded: dlopen then just counts one more reference to it. Any other is refused.
    """
    import ctypes

    vp, c_int, c_uint_p = ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_uint)
    prototypes: dict[str, tuple[Any, ...]] = {  # name: (restype, *argtypes), as in OpenSSL's headers
        "OpenSSL_version_num": (ctypes.c_ulong,),
        "OBJ_txt2nid": (c_int, ctypes.c_char_p),
        "EC_KEY_new_by_curve_name": (vp, c_int),
        "EC_KEY_generate_key": (c_int, vp),
        "EC_KEY_get0_group": (vp, vp),
        "EC_KEY_get0_public_key": (vp, vp),
        "EC_KEY_get0_private_key": (vp, vp),
        "EC_POINT_point2oct": (ctypes.c_size_t, vp, vp, c_int, ctypes.c_char_p, ctypes.c_size_t, vp),
        "BN_bn2binpad": (c_int, vp, ctypes.c_char_p, c_int),
        "EVP_sha256": (vp,),
        "EVP_Digest": (c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, c_uint_p, vp, vp),
        "ECDSA_size": (c_int, vp),
        "ECDSA_sign": (c_int, c_int, ctypes.c_char_p, c_int, ctypes.c_char_p, c_uint_p, vp),
        "EC_KEY_free": (None, vp),
        "ERR_clear_error": (None,),
    }
    try:
        # RTLD_NOLOAD: only a library already in the process; never load a second OpenSSL into it
        dll = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_NOW | os.RTLD_LOCAL)
        functions = {name: getattr(dll, name) for name in prototypes}
    except (OSError, AttributeError):  # not loaded, or a function missing (OpenSSL 1.0, no-deprecated)
        return None
    # Prototypes set on the library's own function objects: a CFUNCTYPE per signature would make
    # a ctypes class each (~0.1 ms apiece), which is most of what declaring them costs.
    for name, (restype, *argtypes) in prototypes.items():
        functions[name].restype = restype
        functions[name].argtypes = argtypes
    if functions["OpenSSL_version_num"]() != ssl.OPENSSL_VERSION_NUMBER:
        return None  # another OpenSSL than the one ssl uses: leave it alone
    return LibCrypto(functions)
