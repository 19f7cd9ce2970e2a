"""NetworkTLS: mTLS to remote plugins with certificate files the operator provides.

Unlike go-plugin's AutoMTLS (a fresh certificate per launch, passed through the
handshake), a shared remote plugin is reached with files an operator or
cert-manager provides: the host's certificate and key, and the CA that signed
the plugins' certificates. ``server_name`` is the name the plugin's
certificate must carry (its SAN) when it differs from the dialed address.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import grpc

from plugbay.errors import ConfigError

# What gRPC says when TLS fails, and what plugbay tells the user about it.
_TLS_SIGNS = (
    # OpenSSL's verify reasons first: they come after CERTIFICATE_VERIFY_FAILED in the same details
    ("certificate has expired", "the plugin's certificate has expired: renew it (cert-manager or the plugin's"
                                " operator), and check that this host's clock is right"),
    ("certificate is not yet valid", "the plugin's certificate is not valid yet: check this host's clock and"
                                     " the certificate's notBefore"),
    ("SSLV3_ALERT_CERTIFICATE_EXPIRED", "the plugin refused the host's certificate (cert_file) as expired:"
                                        " renew it"),
    ("CERTIFICATE_VERIFY_FAILED", "the plugin's certificate is not signed by the CA given (ca_file),"
                                  " or it does not name server_name"),
    ("certificate verify failed", "the plugin's certificate is not signed by the CA given (ca_file)"),
    # grpcio's own check of the peer's name (its SAN) against server_name
    ("Hostname Verification Check failed", "the plugin's certificate does not name server_name: pass the name"
                                           " its subjectAltName carries, or serve it with one naming server_name"),
    ("WRONG_VERSION_NUMBER", "the plugin speaks plaintext: connect with insecure=True, or serve it with TLS"),
    ("CERTIFICATE_REQUIRED", "the plugin wants a client certificate: pass cert_file and key_file"),
    ("TLSV1_ALERT_UNKNOWN_CA", "the plugin does not trust the host's certificate (cert_file): use one"
                               " signed by the CA the plugin trusts"),
    ("SSLV3_ALERT_BAD_CERTIFICATE", "the plugin refused the host's certificate (cert_file)"),
    # TLS 1.3: an OpenSSL server (serve()'s brokering front) refuses the client certificate just after the
    # handshake; grpcio then fails to decrypt that alert
    ("Unwrap failed (TSI_DATA_CORRUPTED)", "the plugin refused the host's certificate (cert_file signed by a"
                                           " CA it does not trust, or no certificate given)"),
    ("TLSV1_ALERT", "the plugin refused the TLS handshake (check cert_file and the plugin's CA)"),
    ("Ssl handshake failed", "the TLS handshake failed"),
    ("Handshake failed", "the TLS handshake failed"),
)
_GENERIC = ("Ssl handshake failed", "Handshake failed")


@dataclass(frozen=True)
class NetworkTLS:
    """Provided mTLS files: the host's certificate chain and key, and the CA to trust plugins by."""

    cert_file: str | None
    key_file: str | None
    ca_file: str
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("NetworkTLS needs cert_file and key_file together (or neither, for"
                              " server-only TLS); got only one of them")

    def _read(self, what: str, path: str | None) -> bytes | None:
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ConfigError(f"NetworkTLS {what} {path!r} cannot be read: {exc}; pass a readable PEM file"
                              ) from exc
        if b"-----BEGIN" not in data:
            raise ConfigError(f"NetworkTLS {what} {path!r} holds no PEM block; pass a PEM file")
        return data

    def credentials(self) -> grpc.ChannelCredentials:
        """grpc channel credentials from the files (read now, so a bad file fails at connect)."""
        return grpc.ssl_channel_credentials(root_certificates=self._read("ca_file", self.ca_file),
                                            private_key=self._read("key_file", self.key_file),
                                            certificate_chain=self._read("cert_file", self.cert_file))

    def ssl_context(self) -> ssl.SSLContext:
        """The same files as an OpenSSL client context (the multiplexed connection's TLS relay)."""
        ca = self._read("ca_file", self.ca_file)
        assert ca is not None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(cadata=ca.decode())
        if self.cert_file is not None and self.key_file is not None:
            self._read("cert_file", self.cert_file)
            self._read("key_file", self.key_file)
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(f"NetworkTLS cert_file {self.cert_file!r} and key_file {self.key_file!r}"
                                  f" cannot be used together ({exc}); pass a certificate and its own key"
                                  ) from exc
        return ctx

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def tls_failure(details: str, *, tls: bool) -> str | None:
    """What went wrong with TLS, judging by a failed call's details; None when they show no definite sign.

    A connection closed during setup is no definite sign (see :func:`cut_short`): plugbay.network.tlsprobe
    tells a refused certificate from a proxy whose backend is down.
    """
    for sign, meaning in _TLS_SIGNS:
        # gRPC's generic "handshake failed" also wraps a connection that merely closed under it
        if sign.lower() in details.lower() and not (sign in _GENERIC and cut_short(details)):
            return meaning
    if not tls and ("Received http2 header with status" in details or "protocol error" in details.lower()):
        return WANTS_TLS
    return None


WANTS_TLS = "the connection was closed during setup; the plugin may want TLS (pass tls=NetworkTLS(...))"
# How gRPC words a connection closed or reset under its setup (TLS handshake or HTTP/2 preface)
_CUT_SHORT = ("Socket closed", "Connection reset", "Handshake read failed", "Handshake write failed",
              "Broken pipe")


def cut_short(details: str) -> bool:
    """Whether the connection closed while gRPC set it up (not in the middle of a call)."""
    return "failed to connect" in details and any(sign in details for sign in _CUT_SHORT)


def cut_short_note(tls: bool) -> str:
    if tls:
        return ("the TLS handshake was cut short: the connection closed before it finished (a proxy whose"
                " backend is down, or a plugin restarting)")
    return "the connection was closed during setup (a proxy whose backend is down, or a plugin restarting)"
