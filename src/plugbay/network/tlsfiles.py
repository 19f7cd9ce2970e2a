"""The host's TLS files (NetworkTLS), read again when they change on disk.

cert-manager and Kubernetes Secret mounts renew the host's client certificate in
place (often by swapping a symlinked ``..data`` folder), so a long-lived
RemoteClient must not keep the set it read at start. :class:`ClientFiles` is
asked for the current set each time a channel to an endpoint is made, on each of
the pool's health ticks (which dial every endpoint again once the set changed:
plugbay.network.poolhealth) and per TLS handshake of a brokered session's relay:
it compares the files' stamps (resolved path, inode, size, mtime) with those of
the set it holds, and reads and checks them again only when one changed.

A renewal seen half done (a truncated PEM, a certificate with the previous
key) is logged once, and the last good set stays in use until the files change
again; only when no good set was ever read is it an error (TLSConfigError,
raised where the connection is made). The serving side does the same with its
own files: plugbay.core.transport.certfiles.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from typing import Any

import grpc

from plugbay.core.transport.certfiles import (Validity, key_fits, load_chain_pem, openssl_said, out_of_dates, validity,
                                              whole_pem)
from plugbay.errors import TLSConfigError

log = logging.getLogger("plugbay.network.tls")

Stamp = tuple[str, int, int, int] | None  # resolved path, inode, size, mtime_ns (None: no such file given)


_NONE = object()


class _Unreadable(TLSConfigError):
    """A file that could not be opened or read: says nothing of its content, so it is tried again."""


class ClientSet:
    """One good set of the host's files, as bytes, and what is built from them (once per set)."""

    def __init__(self, ca_pem: bytes, cert_pem: bytes | None, key_pem: bytes | None,
                 paths: tuple[str, str] | None = None,
                 valid: Validity | None = None, usage: str = "") -> None:
        self.ca_pem, self.cert_pem, self.key_pem = ca_pem, cert_pem, key_pem
        self._paths = paths  # cert_file and key_file, where these bytes were read
        self._valid = valid  # the certificate's notBefore and notAfter (UTC)
        self._usage = usage  # why its extendedKeyUsage makes it no client certificate ("": it may be one)
        self._lock = threading.Lock()
        self._credentials: grpc.ChannelCredentials | None = None
        self._context: ssl.SSLContext | None = None

    def lapsed(self) -> str:
        """Why this set's certificate cannot be taken now by its dates ("": it can, or there is none): what
        the plugin's refusal means when it came for that, which its alert does not say (TLS 1.3's refusal
        reaches gRPC as a bare decryption failure), checked with this host's own clock."""
        if self._paths is None:
            return ""
        return out_of_dates(self._valid, f"this host's certificate (cert_file {self._paths[0]!r})")

    def unfit(self) -> str:
        """Why this set's certificate is no client certificate by its extendedKeyUsage ("": it may be one), which
        every plugin's TLS (OpenSSL's, grpcio's, Go's) refuses without a reason said: a server certificate given
        as cert_file was told it was "signed by a CA it does not trust"."""
        if self._paths is None or not self._usage:
            return ""
        return (f"this host's certificate (cert_file {self._paths[0]!r}) is no client certificate: {self._usage};"
                " pass one issued for client use (extendedKeyUsage clientAuth)")

    def credentials(self) -> grpc.ChannelCredentials:
        with self._lock:
            if self._credentials is None:
                self._credentials = grpc.ssl_channel_credentials(
                    root_certificates=self.ca_pem, private_key=self.key_pem, certificate_chain=self.cert_pem)
            return self._credentials

    def ssl_context(self) -> ssl.SSLContext:
        """An OpenSSL client context that trusts the CA and presents the certificate (a session's relay)."""
        with self._lock:
            if self._context is None:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                try:
                    ctx.load_verify_locations(cadata=self.ca_pem.decode())
                except ssl.SSLError as exc:
                    raise TLSConfigError(f"NetworkTLS: OpenSSL refused the CA certificates: {openssl_said(exc)};"
                                         " pass the CA certificates that sign the plugins' certificates") from exc
                self.load_into(ctx)
                self._context = ctx
            return self._context

    def load_into(self, ctx: ssl.SSLContext) -> None:
        """Present this set's certificate and key on ``ctx`` (nothing when the set has none)."""
        if self.cert_pem is None or self.key_pem is None:
            return
        # OpenSSL loads a key only from a file: the user's own while they still hold this set (checked
        # again after the load, a renewal may land meanwhile), else a private temporary copy
        if self._on_disk():
            assert self._paths is not None
            try:
                ctx.load_cert_chain(*self._paths)
            except (OSError, ssl.SSLError):
                pass  # replaced under the load: the copy below
            else:
                if self._on_disk():
                    return
        try:
            load_chain_pem(ctx, self.cert_pem, self.key_pem)
        except ssl.SSLError as exc:  # an OSError too: OpenSSL refused the set itself, not the temp file
            raise TLSConfigError(f"NetworkTLS: OpenSSL refused the certificate and key: {openssl_said(exc)};"
                                 " pass a PEM certificate and its own unencrypted key") from exc
        except OSError as exc:
            where = f" ({self._paths[0]!r}, {self._paths[1]!r})" if self._paths else ""
            raise TLSConfigError(
                f"NetworkTLS cannot present its certificate and key: the files{where} no longer hold the set"
                f" in use, and loading that set needs a temporary file, which could not be made ({exc}); set"
                " TMPDIR to a writable folder only this user can read") from exc

    def _on_disk(self) -> bool:
        """Whether cert_file and key_file hold exactly this set's bytes now."""
        if self._paths is None:
            return False
        try:
            with open(self._paths[0], "rb") as cert, open(self._paths[1], "rb") as key:
                return (cert.read(), key.read()) == (self.cert_pem, self.key_pem)
        except OSError:
            return False


def _read(what: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise _Unreadable(f"NetworkTLS {what} {path!r} cannot be read: {exc}; pass a readable PEM file") from exc
    if b"-----BEGIN" not in data:
        raise TLSConfigError(f"NetworkTLS {what} {path!r} holds no PEM block; pass a PEM file")
    return data


def load(cert_file: str | None, key_file: str | None, ca_file: str) -> ClientSet:
    """Read and check the files: a TLSConfigError says which one is wrong."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    ca_text = _read("ca_file", ca_file)  # its TLSConfigError is a ValueError: not caught below
    try:
        cas = x509.load_pem_x509_certificates(ca_text)
    except ValueError:
        raise TLSConfigError(f"NetworkTLS ca_file {ca_file!r} holds no whole PEM certificate; pass the CA"
                             " certificates that sign the plugins' certificates") from None
    if not whole_pem(ca_text, len(cas)):
        raise TLSConfigError(f"NetworkTLS ca_file {ca_file!r} holds a PEM block cut short (written only in"
                             " part?); pass the whole CA bundle")
    # the CAs as parsed, not the file: text around its PEM blocks (comments, another encoding's bytes)
    # is nothing either TLS stack should be handed (the stdlib's takes the PEM as str)
    ca = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in cas)
    if cert_file is None or key_file is None:
        return ClientSet(ca, None, None)
    cert, key = _read("cert_file", cert_file), _read("key_file", key_file)
    try:
        chain = x509.load_pem_x509_certificates(cert)
        private = serialization.load_pem_private_key(key, password=None)
    except UnsupportedAlgorithm as exc:  # a well-formed key of a type cryptography does not know (SM2, say)
        raise TLSConfigError(f"NetworkTLS key_file {key_file!r}: key type not supported; pass an RSA, EC or"
                             f" Ed25519 key ({exc})") from None
    except (ValueError, TypeError) as exc:
        raise TLSConfigError(f"NetworkTLS cert_file {cert_file!r} and key_file {key_file!r} cannot be used"
                             f" together ({exc}); pass a PEM certificate and its own unencrypted key") from None
    if not whole_pem(cert, len(chain)):
        raise TLSConfigError(f"NetworkTLS cert_file {cert_file!r} holds a PEM block cut short (written only in"
                             " part?); pass the whole certificate chain")
    try:
        fits = key_fits(chain[0], private)
    except (UnsupportedAlgorithm, ValueError, TypeError) as exc:  # the certificate's key is of such a type
        raise TLSConfigError(f"NetworkTLS cert_file {cert_file!r}: key type not supported; pass a certificate"
                             f" for an RSA, EC or Ed25519 key ({exc})") from None
    if not fits:
        raise TLSConfigError(f"NetworkTLS cert_file {cert_file!r} and key_file {key_file!r} cannot be used"
                             " together (the key does not belong to the certificate); pass a certificate and"
                             " its own key (renew both files together)")
    return ClientSet(ca, cert, key, (cert_file, key_file), validity(chain[0]), client_usage(chain[0]))


def client_usage(cert: Any) -> str:
    """What in ``cert``'s extendedKeyUsage keeps it from client use ("": nothing, or it has none)."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except Exception:  # none, or extensions cryptography cannot parse (DuplicateExtension, ...): the TLS stacks judge
        return ""
    if ExtendedKeyUsageOID.CLIENT_AUTH in usage or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usage:
        return ""
    names = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
             ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection"}
    listed = ", ".join(names.get(oid, oid.dotted_string) for oid in usage)
    return f"its extendedKeyUsage ({listed}) lacks clientAuth"


def _load_typed(paths: tuple[str | None, str | None, str]) -> ClientSet:
    """load(), anything it did not foresee in the files (cryptography's parsers vary by version) made a
    TLSConfigError: a pool's health thread and a resolver's reports must not die of a renewal."""
    try:
        return load(*paths)
    except TLSConfigError:
        raise
    except Exception as exc:
        raise TLSConfigError(f"NetworkTLS files {', '.join(repr(p) for p in paths if p)} cannot be used"
                             f" ({type(exc).__name__}: {exc}); pass a PEM certificate, its own unencrypted RSA,"
                             " EC or Ed25519 key, and the CA certificates") from exc


def _stamp(path: str | None) -> Stamp:
    if path is None:
        return None
    real = os.path.realpath(path)
    st = os.stat(real)
    return real, st.st_ino, st.st_size, st.st_mtime_ns


class ClientFiles:
    """The current good set of a NetworkTLS's files; see the module docstring."""

    def __init__(self, cert_file: str | None, key_file: str | None, ca_file: str) -> None:
        self._paths = (cert_file, key_file, ca_file)
        self._lock = threading.Lock()
        self._good: ClientSet | None = None
        self._stamps: tuple[Stamp, ...] | None = None
        self._warned: object = _NONE  # the stamps of a set that did not load, warned of
        self._bad = False  # that set's content is wrong: it is not read again until the files change
        self.reloads = 0

    def _all_stamps(self) -> tuple[Stamp, ...] | None:
        try:
            return tuple(_stamp(p) for p in self._paths)
        except OSError:
            return None  # a file missing: mid-swap, or gone (then read below, for its error)

    def held(self) -> ClientSet | None:
        """The set last taken, as it is (None: none yet): no stat, no read, no lock, for a caller holding its
        own (a pool's, building an error that names the presented certificate's dates)."""
        return self._good

    def current(self) -> ClientSet:
        """The set to make a new connection with: re-read when the files changed since the last one."""
        with self._lock:
            stamps = self._all_stamps()
            good = self._good
            if good is not None and (stamps == self._stamps or (self._bad and stamps == self._warned)):
                return good
            try:
                loaded = _load_typed(self._paths)
                # built before the set is taken: one OpenSSL refuses is no better than a half-written one
                loaded.ssl_context()
            except TLSConfigError as exc:
                if good is None:
                    raise  # no set was ever good: the connection cannot be made
                if stamps != self._warned:
                    self._warned = stamps
                    log.warning("NetworkTLS files changed but the new set is not usable yet, keeping the"
                                " previous one for new connections: %s", exc)
                self._bad = stamps is not None and not isinstance(exc, _Unreadable)
                return good
            self._stamps, self._warned, self._bad = stamps, _NONE, False
            if good is not None and (loaded.ca_pem, loaded.cert_pem, loaded.key_pem) == \
                    (good.ca_pem, good.cert_pem, good.key_pem):
                return good  # touched, not changed: keep what was built from it
            if good is not None:
                self.reloads += 1
                log.info("NetworkTLS files reloaded for new connections (%s)",
                         ", ".join(p for p in self._paths if p))
            self._good = loaded
            return loaded
