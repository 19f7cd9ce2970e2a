"""Provided TLS files for network mode: load, check, and reload them when they change on disk.

A plugin served on the network (serve() with NetworkServe, or the gateway)
presents a certificate and key the operator provides and accepts only clients
whose certificate the client CA signed (mutual TLS). Kubernetes rotates such
files in place, usually by swapping a symlinked folder (``..data``), so the
files are re-read when their resolved path, size or mtime changes:
:class:`CertFiles` is the fetcher of ``grpc.dynamic_ssl_server_credentials``,
which grpcio calls on each new TLS handshake. Established connections keep the
keys they were made with; new ones get the new files. A half-written or
mismatched new set is logged once and the previous set stays in use; it is
tried again only when the files change again (files that could not be read at
all are tried again at the next handshake: that says nothing of their content).

This module holds the one decision "grpcio's TLS or our own": a listener
that serves plain gRPC only (the gateway, ``NetworkServe(multiplex=False)``)
terminates TLS in grpcio (:func:`server_credentials`); serve()'s brokering
front (plugbay.core.plugin.netmux) terminates it in OpenSSL through a TLSRelay
whose context comes from :meth:`CertFiles.ssl_context` (rebuilt when the files
change, the same checks and the same reload rules). grpcio cannot use P-521
keys, so such files are refused with a TLSConfigError up front either way.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any

import grpc

from plugbay.errors import TLSConfigError

log = logging.getLogger("plugbay.network.tls")

_GRPC_CURVES = ("secp256r1", "secp384r1")
_RSA_MIN_BITS = 2048  # below it OpenSSL's default security level refuses the key (EE_KEY_TOO_SMALL)
_CERT_BEGIN = re.compile(rb"-----BEGIN (?:X509 )?CERTIFICATE-----")


@dataclass(frozen=True)
class TLSFiles:
    """Where the server's certificate chain, its key and the client CA bundle are (PEM files)."""

    cert_file: str
    key_file: str
    client_ca_file: str


Validity = tuple[datetime.datetime, datetime.datetime]  # a certificate's notBefore and notAfter, UTC


@dataclass(frozen=True)
class LoadedTLS:
    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes
    valid: Validity | None = field(default=None, compare=False)  # read from cert_pem: no part of a set's identity


# serve() is configured by its environment as often as in code: naming only the gateway's flags and the fields
# sent a plugin's user looking for a --cert its command line does not have
NEEDS_FILES = ("network mode needs cert_file, key_file and client_ca_file for mutual TLS (the gateway's --cert, --key,"
               " --client-ca; a plugin's PLUGBAY_NETWORK_CERT, PLUGBAY_NETWORK_KEY, PLUGBAY_NETWORK_CLIENT_CA);"
               " pass insecure=True (--insecure, PLUGBAY_NETWORK_INSECURE=1) only for a trusted test network")


def _given(flag: str, field: str, env: str) -> str:
    """The ways one TLS file is given: the gateway's flag, the config field, serve()'s and the gateway's variable
    (no parenthesis: the messages that name them end with one of their own)."""
    return f"{flag}, {field}, PLUGBAY_NETWORK_{env} or the gateway's PLUGBAY_GATEWAY_{env}"


def openssl_said(exc: ssl.SSLError) -> str:
    """OpenSSL's words in ``exc`` without CPython's place in its source ("(_ssl.c:3900)"): a message quoting
    them read "... (_ssl.c:3900)); pass", two parentheses at its end."""
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(exc))


def _read(path: str, what: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise TLSConfigError(f"the {what} file {path!r} does not exist; pass the PEM file with {flag}"
                             " (in Kubernetes: mount the TLS Secret there)") from None
    except IsADirectoryError:  # "make it readable" sent the user to its permissions
        raise TLSConfigError(f"the {what} file {path!r} is a folder; pass the PEM file in it with {flag}"
                             " (in Kubernetes: the file the TLS Secret's key is mounted as)") from None
    except OSError as exc:
        raise _Unreadable(f"cannot read the {what} file {path!r}: {exc.strerror}; make it readable"
                          " by this process's user") from None


class _Unreadable(TLSConfigError):
    """A file that could not be read, which says nothing of its content (out of descriptors, say)."""


def load(files: TLSFiles) -> LoadedTLS:
    """Read and check the three files; a TLSConfigError says which one is wrong and how."""
    # cryptography here, not at import: a plugin served without TLS files never loads it
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    cert_pem = _read(files.cert_file, "certificate", _given("--cert", "cert_file", "CERT"))
    key_pem = _read(files.key_file, "private key", _given("--key", "key_file", "KEY"))
    ca_pem = _read(files.client_ca_file, "client CA", _given("--client-ca", "client_ca_file", "CLIENT_CA"))
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TLSConfigError(f"{files.cert_file!r} holds no PEM certificate; pass the server's certificate"
                             " (chain) in PEM form, '-----BEGIN CERTIFICATE-----'") from None
    if not whole_pem(cert_pem, len(chain)):
        raise TLSConfigError(f"{files.cert_file!r} holds a PEM block cut short (written only in part?); pass"
                             " the whole certificate chain")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # the last: a key type it does not know
        raise TLSConfigError(f"{files.key_file!r} holds no unencrypted PEM private key ({exc}); pass the"
                             " key of the certificate in PEM form without a passphrase") from None
    try:
        cas = x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise TLSConfigError(f"{files.client_ca_file!r} holds no PEM certificate; pass the CA certificates"
                             " that sign the hosts' client certificates") from None
    if not cas:
        raise TLSConfigError(f"{files.client_ca_file!r} is empty; pass the client CA certificates")
    if not whole_pem(ca_pem, len(cas)):
        raise TLSConfigError(f"{files.client_ca_file!r} holds a PEM block cut short (written only in part?);"
                             " pass the whole client CA bundle")
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise TLSConfigError(f"{files.key_file!r} is a {type(key).__name__}; use an RSA or ECDSA"
                             " (P-256/P-384) key")
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name not in _GRPC_CURVES:
        raise TLSConfigError(f"{files.key_file!r} is an ECDSA key on {key.curve.name}, which gRPC's TLS"
                             " cannot use; issue the certificate with RSA-2048+ or P-256/P-384")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < _RSA_MIN_BITS:
        raise TLSConfigError(f"{files.key_file!r} is an RSA-{key.key_size} key, which OpenSSL refuses as too"
                             f" weak; issue the certificate with RSA-{_RSA_MIN_BITS}+ or P-256/P-384")
    try:
        fits = key_fits(chain[0], key)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # the certificate's key is of such a type
        raise TLSConfigError(f"{files.cert_file!r} is for a key type not supported ({exc}); issue it for an RSA"
                             " or ECDSA (P-256/P-384) key") from None
    if not fits:
        raise TLSConfigError(f"the key in {files.key_file!r} does not belong to the certificate in"
                             f" {files.cert_file!r}; pass the key the certificate was issued for (rotate"
                             " both files together)")
    # the CAs as parsed, not the file: text around its PEM blocks (comments, another encoding's bytes)
    # is nothing either TLS stack should be handed (the stdlib's takes the PEM as str)
    ca_clean = b"".join(ca.public_bytes(serialization.Encoding.PEM) for ca in cas)
    return LoadedTLS(cert_pem, key_pem, ca_clean, validity(chain[0]))


def validity(cert: Any) -> Validity | None:
    """``cert``'s notBefore and notAfter; None when they cannot be read as dates (cryptography loads a
    GeneralizedTime of year 0000 but cannot make it a datetime): no date note then, the TLS stacks judge."""
    try:
        return cert.not_valid_before_utc, cert.not_valid_after_utc
    except (ValueError, OverflowError):
        return None


# What to do about a certificate out of its dates, whichever side's and however it was found
RENEW = "renew it (cert-manager, or whoever issues it), and check that this machine's clock is right"
NOT_YET = "check this machine's clock and the certificate's notBefore"


def out_of_dates(valid: Validity | None, what: str) -> str:
    """Why the certificate (``what``: how to name it) cannot be taken now by its dates, by this machine's
    clock, and what to do; "" when it can (or its dates are unknown). The one wording of both sides."""
    lapse = _lapse(valid)
    if valid is None or lapse is None:
        return ""
    if lapse == "expired":
        return f"{what} expired at {valid[1]:%Y-%m-%d %H:%M:%S} UTC: {RENEW}"
    return f"{what} is not valid until {valid[0]:%Y-%m-%d %H:%M:%S} UTC: {NOT_YET}"


def _lapse(valid: Validity | None) -> str | None:
    """How a certificate of these dates is out of them now ("expired", "early"); None when it is not (or its
    dates are unknown)."""
    if valid is None:
        return None
    now = datetime.datetime.now(datetime.timezone.utc)
    return "expired" if now > valid[1] else "early" if now < valid[0] else None


def whole_pem(data: bytes, certificates: int) -> bool:
    """Whether every PEM block in ``data`` is closed and each certificate block is among the ``certificates``
    parsed: cryptography silently drops a block cut short, which a file caught mid-write ends in."""
    return data.count(b"-----BEGIN") == data.count(b"-----END") and len(_CERT_BEGIN.findall(data)) == certificates


def key_fits(cert: Any, key: Any) -> bool:
    """Whether ``key`` (a cryptography private key) is the key of ``cert`` (an x509.Certificate)."""
    from cryptography.hazmat.primitives import serialization

    der, pub = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(cert.public_key().public_bytes(der, pub) == key.public_key().public_bytes(der, pub))


def load_chain_pem(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """Load a certificate chain and its key, held in memory, into ``ctx``."""
    # ssl loads key material only from files: a private file for the blink of an eye
    fd, path = tempfile.mkstemp(prefix="plugbay-tls-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(cert_pem + b"\n" + key_pem)
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)


def _stamp(path: str) -> tuple[str, int, int]:
    real = os.path.realpath(path)
    st = os.stat(real)
    return real, st.st_size, st.st_mtime_ns


class CertFiles:
    """The current TLS files, re-read when they change; checks happen on each new handshake.

    With ``openssl`` (serve()'s brokering front) each set is also built into an OpenSSL context before it
    is taken, so a set OpenSSL refuses fails here (the first) or is kept out like any unusable one (a
    rotation), instead of failing every handshake.
    """

    def __init__(self, files: TLSFiles, openssl: bool = True) -> None:
        self.files = files
        self._lock = threading.Lock()
        self.current = load(files)  # raises: the first set must be good
        self._ctx = _checked_context(self.current, files) if openssl else None  # raises likewise
        self._stamps = self._all_stamps()
        # the stamps of a set that did not load: the provider runs per accepted connection (on the
        # shared I/O loop for the brokering front), so it is not read, parsed nor warned about again
        # until the files change once more
        self._failed: tuple[tuple[str, int, int], ...] | None = None
        self._unread: tuple[tuple[str, int, int], ...] | None = None  # a change whose read failed, warned of
        # the set whose dates were warned of, and how it lapsed: a set first not yet valid (a clock skewed at
        # the start) that later expires while serving is warned of again
        self._dates_warned: tuple[LoadedTLS, str] | None = None
        self.reloads = 0
        self._warn_if_out_of_dates()

    def _all_stamps(self) -> tuple[tuple[str, int, int], ...] | None:
        try:
            return tuple(_stamp(p) for p in (self.files.cert_file, self.files.key_file,
                                               self.files.client_ca_file))
        except OSError:
            return None  # mid-swap: try again on the next handshake

    def config(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.current.key_pem, self.current.cert_pem)], root_certificates=self.current.client_ca_pem)

    def changed(self) -> bool:
        """Reload when the files changed; True when a new good set is now current."""
        with self._lock:
            stamps = self._all_stamps()
            if stamps is None or stamps == self._stamps or stamps == self._failed:
                return False
            try:
                loaded = load(self.files)
                # built before the set is taken: one OpenSSL refuses is no better than a half-written one
                ctx = _checked_context(loaded, self.files) if self._ctx is not None and \
                    loaded != self.current else None
            except _Unreadable as exc:  # tried again at the next handshake; said once per change
                if self._unread != stamps:
                    self._unread = stamps
                    log.warning("TLS files changed but could not be read, keeping the old ones: %s", exc)
                return False
            except TLSConfigError as exc:
                self._failed = stamps
                log.warning("TLS files changed but the new set is not usable yet, keeping the old one"
                            " until they change again: %s", exc)
                return False
            except Exception:
                self._failed = stamps  # the caller logs it: once, too
                raise
            self._stamps = stamps
            self._failed = None
            if loaded == self.current:
                return False
            self.current = loaded
            if ctx is not None:
                self._ctx = ctx
            self.reloads += 1
            log.info("TLS files reloaded (%s, %s, %s)", *(s[0] for s in stamps))
            self._warn_if_out_of_dates()
            return True

    def _warn_if_out_of_dates(self) -> None:
        """Under the lock (or before the first handshake): warn once per set taken and way it lapsed (not yet
        valid, expired) when its certificate is out of its dates now. Such a set still serves (a renewal may be
        on its way, and is taken when the files change), but every host refuses it and says so only on its own
        side: the operator reading this log learned nothing. Run per handshake too, so a certificate that lapses
        while serving is warned of: a comparison of the set's dates (read once, with the set) with the clock, no
        file read."""
        lapse = _lapse(self.current.valid)
        if lapse is None or (self._dates_warned is not None and self._dates_warned[0] is self.current
                             and self._dates_warned[1] == lapse):
            return
        words = out_of_dates(self.current.valid, f"the certificate in {self.files.cert_file!r}")
        if words:
            self._dates_warned = (self.current, lapse)
            log.warning("%s; every host refuses it meanwhile (it still serves: a renewed set is taken when the"
                        " files change)", words)

    def _check_dates(self) -> None:
        with self._lock:
            self._warn_if_out_of_dates()

    def ssl_context(self) -> ssl.SSLContext:
        """An OpenSSL server context for the current files (a TLSRelay's provider: one call per handshake).

        Built when the files changed to a good new set; otherwise the one built last.
        """
        try:
            self.changed()
        except Exception:
            log.exception("checking the TLS files failed; keeping the current set")
        with self._lock:
            self._warn_if_out_of_dates()
            if self._ctx is None:  # made with openssl=False: built now, checked as the first set is
                self._ctx = _checked_context(self.current, self.files)
            return self._ctx

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpcio's fetcher: a new configuration, or None to keep the current one."""
        try:
            fresh = self.config() if self.changed() else None
        except Exception:  # an exception here would fail the handshake; keep serving the old set
            log.exception("checking the TLS files failed; keeping the current set")
            fresh = None
        self._check_dates()
        return fresh


def _context(loaded: LoadedTLS) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=loaded.client_ca_pem.decode())
    ctx.set_alpn_protocols(["h2"])  # gRPC clients insist on h2; a yamux host sends no ALPN
    load_chain_pem(ctx, loaded.cert_pem, loaded.key_pem)
    return ctx


def _checked_context(loaded: LoadedTLS, files: TLSFiles) -> ssl.SSLContext:
    """_context(), OpenSSL's refusal a TLSConfigError naming the files (a temporary file not made: _Unreadable,
    which says nothing of them)."""
    try:
        return _context(loaded)
    except ssl.SSLError as exc:
        raise TLSConfigError(f"OpenSSL refused the TLS files {files.cert_file!r}, {files.key_file!r},"
                             f" {files.client_ca_file!r}: {openssl_said(exc)}; pass a certificate chain signed"
                             " with SHA-256+, its own RSA-2048+ or P-256/P-384 key and the client CA certificates"
                             ) from None
    except OSError as exc:
        raise _Unreadable(f"cannot load the TLS files into OpenSSL: a temporary file could not be made ({exc});"
                          " set TMPDIR to a writable folder only this user can read") from None


def front_certs(files: TLSFiles | None) -> CertFiles:
    """The files of serve()'s brokering front (TLS in OpenSSL, see the module docstring)."""
    if files is None:
        raise TLSConfigError(NEEDS_FILES)
    return CertFiles(files)


def server_credentials(files: TLSFiles | None, insecure: bool) -> tuple[grpc.ServerCredentials | None,
                                                                        CertFiles | None]:
    """The one place that decides how a network listener does TLS.

    mTLS with the provided files through grpcio (reloaded on change), or
    plaintext when ``insecure`` (logged loudly). Neither: TLSConfigError.
    """
    if insecure:
        log.warning("INSECURE: serving plaintext gRPC on the network without TLS or client"
                    " authentication; anyone who can reach the port can call the plugin. Use this only"
                    " on a trusted loopback/test network, never in production")
        return None, None
    if files is None:
        raise TLSConfigError(NEEDS_FILES)
    certs = CertFiles(files, openssl=False)  # grpcio's own TLS: no OpenSSL context to build
    creds = grpc.dynamic_ssl_server_credentials(certs.config(), certs.fetch,
                                                require_client_authentication=True)
    return creds, certs
