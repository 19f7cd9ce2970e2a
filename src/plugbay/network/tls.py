"""NetworkTLS: mTLS to remote plugins with certificate files the operator provides.

Unlike go-plugin's AutoMTLS (a fresh certificate per launch, passed through the
handshake), a shared remote plugin is reached with files an operator or
cert-manager provides: the host's certificate and key, and the CA that signed
the plugins' certificates (read again when they change on disk, every endpoint
then dialed again with them: plugbay.network.tlsfiles). ``server_name`` is the name the plugin's
certificate must carry (its SAN) when it differs from the dialed address.
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass
from typing import ClassVar

import grpc

from plugbay.core.transport.certfiles import NOT_YET, RENEW
from plugbay.core.transport.secure import NOT_HTTP2_WORDS, NOT_TLS_WORDS
from plugbay.errors import ConfigError
from plugbay.network.tlsfiles import ClientFiles, ClientSet

NAME_MISMATCH = ("the plugin's certificate does not name server_name: pass the name its subjectAltName carries,"
                 " or serve the plugin with a certificate naming server_name")
# One wording, however the refusal reached this host (an alert over gRPC or the TLS probe, or the close after it)
_DISTRUSTED = ("the plugin refused the host's certificate (cert_file signed by a CA it does not trust, or no"
               " certificate given)")
_PEER_EXPIRED = f"the plugin's certificate has expired: {RENEW}"
_PEER_NOT_YET = f"the plugin's certificate is not valid yet: {NOT_YET}"
# The plugin's certificate out of its dates by this host's clock: definite for this handshake, yet a date
# passes (a renewal served a few seconds early, a little clock skew), so a wait for a target coming up
# (the command line's --timeout) may still see it pass
PEER_CERT_DATES = frozenset({_PEER_EXPIRED, _PEER_NOT_YET})
_REFUSED = "the plugin refused the host's certificate (cert_file)"
_REFUSED_EXPIRED = f"{_REFUSED} as expired: renew it"
# What gRPC says when TLS fails, and what plugbay tells the user about it.
_TLS_SIGNS = (
    # OpenSSL's verify reasons first: they come after CERTIFICATE_VERIFY_FAILED in the same details
    ("certificate has expired", _PEER_EXPIRED), ("certificate is not yet valid", _PEER_NOT_YET),
    ("SSLV3_ALERT_CERTIFICATE_EXPIRED", _REFUSED_EXPIRED),
    # Python's ssl (a multiplexed endpoint's TLS probe, plugbay.network.tlsprobe) on the plugin's name
    ("Hostname mismatch", NAME_MISMATCH), ("IP address mismatch", NAME_MISMATCH),
    ("CERTIFICATE_VERIFY_FAILED", "the plugin's certificate is not signed by the CA given (ca_file),"
                                  " or it does not name server_name"),
    ("certificate verify failed", "the plugin's certificate is not signed by the CA given (ca_file)"),
    # grpcio's own check of the peer's name (its SAN) against server_name
    ("Hostname Verification Check failed", NAME_MISMATCH),
    (NOT_TLS_WORDS, "the plugin speaks plaintext: connect with insecure=True, or serve it with TLS"),
    ("CERTIFICATE_REQUIRED", "the plugin wants a client certificate: pass cert_file and key_file"),
    ("TLSV1_ALERT_UNKNOWN_CA", _DISTRUSTED),
    ("SSLV3_ALERT_BAD_CERTIFICATE", _REFUSED),
    # TLS 1.3: an OpenSSL server (serve()'s brokering front) refuses the client certificate just after the
    # handshake; grpcio then fails to decrypt that alert
    ("Unwrap failed (TSI_DATA_CORRUPTED)", _DISTRUSTED),
    ("TLSV1_ALERT", "the plugin refused the TLS handshake (check cert_file and the plugin's CA)"),
    ("Ssl handshake failed", "the TLS handshake failed"),
    ("Handshake failed", "the TLS handshake failed"),
)
_GENERIC = ("Ssl handshake failed", "Handshake failed")
# the plugin's refusals of this host's certificate: the only failures a TLS probe that does not check the
# plugin's certificate (plain gRPC's: plugbay.network.tlsprobe) can see gone, by a handshake the plugin takes
HOST_CERT_REFUSALS = frozenset(meaning for _, meaning in _TLS_SIGNS if meaning.startswith("the plugin refused"))


@dataclass(frozen=True)
class NetworkTLS:
    """Provided mTLS files: the host's certificate chain and key, and the CA to trust plugins by."""

    cert_file: str | None
    key_file: str | None
    ca_file: str
    server_name: str | None = None
    _files: ClassVar[ClientFiles]  # each instance's own, set in __post_init__

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("NetworkTLS needs cert_file and key_file together (or neither, for"
                              " server-only TLS); got only one of them")
        for what in ("cert_file", "key_file", "ca_file"):
            path = getattr(self, what)
            if path is None and what != "ca_file":
                continue
            # checked now: open() and stat() given another type raise a bare TypeError when the pool starts
            if not isinstance(path, (str, bytes, os.PathLike)):
                raise ConfigError(f"NetworkTLS {what} must be the path of a PEM file (a str), got {path!r:.80}"
                                  + ("; the CA file is required: the plugins' certificates are checked against it"
                                     if what == "ca_file" else ""))
            raw = os.fspath(path)
            if ("\0" if isinstance(raw, str) else b"\0") in raw:  # no file is named so: open() raises ValueError
                raise ConfigError(f"NetworkTLS {what} {path!r} holds a NUL byte; pass the path of a PEM file")
        if self.server_name is not None and not isinstance(self.server_name, str):
            raise ConfigError(f"NetworkTLS server_name must be the name the plugins' certificates carry (a str) or"
                              f" None, got {self.server_name!r:.80}")
        # not a dataclass field: equality, repr and asdict() stay the four paths
        object.__setattr__(self, "_files", ClientFiles(self.cert_file, self.key_file, self.ca_file))

    def __reduce__(self) -> tuple[type[NetworkTLS], tuple[str | None, str | None, str, str | None]]:
        # copies and pickles name the same files and read them anew (a lock does not pickle)
        return NetworkTLS, (self.cert_file, self.key_file, self.ca_file, self.server_name)

    def files(self) -> ClientSet:
        """The current good set of the files: read again only when they changed on disk since the last
        call (stat per call), a half-done renewal keeping the previous set (plugbay.network.tlsfiles).
        TLSConfigError (a ConfigError) when no good set could ever be read."""
        return self._files.current()

    def credentials(self) -> grpc.ChannelCredentials:
        """grpc channel credentials for a new channel, from the current files (see :meth:`files`)."""
        return self.files().credentials()

    def ssl_context(self) -> ssl.SSLContext:
        """The current files as an OpenSSL client context (the multiplexed connection's TLS relay)."""
        return self.files().ssl_context()

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def with_lapsed_cert(meaning: str, tls: NetworkTLS | None) -> str:
    """``meaning`` of a refusal of this host's certificate, with why when the certificate is out of its dates
    (expired, not valid yet) or no client certificate (its extendedKeyUsage): the plugin's refusal names no
    reason (TLS 1.3's alert reaches gRPC as a bare decryption failure, gRPC's own TLS just closes), and
    "signed by a CA it does not trust" sent the user to the wrong file. Runs under the pool's lock: the set
    held is judged, no file is read."""
    if tls is None or "host's certificate" not in meaning:
        return meaning
    held = tls._files.held()  # the set the connections were made with; files() may read them, under a lock
    lapsed = (held.lapsed() or held.unfit()) if held is not None else ""
    if not lapsed:
        return meaning
    # the date and what to do follow: the expired alert's own "as expired: renew it" would say it twice
    return f"{_REFUSED if meaning == _REFUSED_EXPIRED else meaning}; {lapsed}"


def name_checked(meaning: str, tls: NetworkTLS | None, key: str) -> str:
    """``meaning`` of a failure that may be the plugin's certificate not naming server_name, with the name it
    was checked against: the server_name given, or without one the host the endpoint ``key`` dials. A user who
    gave no server_name was told only that the certificate "does not name server_name"."""
    if tls is None or "does not name server_name" not in meaning:
        return meaning
    if tls.server_name:
        name, why = repr(tls.server_name), "the server_name given"
    else:
        kind, _, address = key.partition(":")
        if kind != "tcp":
            return meaning
        name, why = repr(address.rpartition(":")[0].strip("[]")), "the address dialed (no server_name given)"
    if meaning == NAME_MISMATCH:
        return (f"the plugin's certificate does not name {name}, {why}: pass server_name, the name its"
                f" subjectAltName carries, or serve the plugin with a certificate naming {name}")
    return meaning.replace("does not name server_name", f"does not name {name}, {why}")


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
    if not tls and NOT_HTTP2_WORDS in details:
        return NOT_HTTP2
    return None


# what to do about any TLS failure (an error's, an endpoint's health detail)
CHECK_TLS = "check NetworkTLS(cert_file, key_file, ca_file, server_name) against the plugin's TLS setup"
WANTS_TLS = "the connection was closed during setup; the plugin may want TLS (pass tls=NetworkTLS(...))"
# A plaintext peer whose first bytes are no HTTP/2 frame (an HTTP/1 server, any other service; a TLS
# server's 7-byte alert is too short for a frame header: 'Socket closed', WANTS_TLS's case): no plugin
# answers so, and waiting for it cannot help (the connection was refused instead when the plugin was not up)
NOT_HTTP2 = ("the endpoint answered with something other than HTTP/2 (gRPC): it is no plaintext plugin; it may"
             " want TLS (pass tls=NetworkTLS(...)), or the target names another service")


def not_grpc_words(where: str, dialed: str, meaning: str, details: str, rest: str = "") -> str:
    """The words of a plaintext endpoint that answered no HTTP/2 (NOT_HTTP2, ``meaning`` as the caller words
    its advice): the library's RemoteProtocolError and the command line's refusal say one thing."""
    return (f"{where}, dialed in plaintext ({dialed}), is no gRPC plugin: {meaning} (gRPC said: {details}){rest}."
            " Check the target, and whether the plugin is served with TLS")


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


# a multiplexed endpoint's gRPC dials its relay's private socket (core.transport.muxhost), not the endpoint
_RELAY_SOCKET = re.compile(r"unix:(?://)?/\S*?plugbay-mux-[^/\s]*/main\.sock")


def relay_named(details: str, key: str) -> str:
    """gRPC's ``details`` with a multiplexed endpoint's relay socket shown as the endpoint (``key``)."""
    return _RELAY_SOCKET.sub(key, details)
