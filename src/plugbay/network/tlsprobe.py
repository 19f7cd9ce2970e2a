"""Tell a refused TLS handshake from a connection that was merely cut short.

When a connection closes during gRPC's setup, gRPC's details say only "Socket
closed" (or "Handshake read failed"): a plugin that refused this host's
certificate (gRPC's TLS 1.3 servers close without an alert once they have seen
it) reads the same as a proxy whose backend is down or a plugin restarting.
Only the first is worth failing a call at once. :func:`probe_taken` makes one TLS
handshake of its own with the endpoint: a TLS alert is definite, a close right
after the handshake is CLOSED_AFTER_HANDSHAKE for the pool to weigh
(pooltls), a handshake the plugin took and kept is TOOK_IT (no failure: it ends
a TLS failure the pool remembers), and anything else answers None, so the call
goes on retrying within its deadline.

A multiplexed endpoint's TLS is made by plugbay's relay, not gRPC, so gRPC's
details never say what went wrong there: its probe (``verify``) makes the
relay's own handshake (the same context and server name), so it also judges
the plugin's certificate, and every refusal reads as it does over plain gRPC.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import time

from plugbay.core.transport.sockets import dial
from plugbay.network.resolver import Endpoint
from plugbay.network.tls import WANTS_TLS, NetworkTLS, tls_failure

_log = logging.getLogger("plugbay.network")
REFUSED_CERT = ("the plugin answered the host's certificate with a TLS alert: it refused it (cert_file signed"
                " by a CA it does not trust, or no certificate given)")
# Not definite on its own: gRPC's TLS 1.3 servers close so when they refuse a certificate, and so does a
# TLS-terminating proxy whose backend is down. The pool decides (pooltls.PoolTLS.tls_verdict).
CLOSED_AFTER_HANDSHAKE = (
    "the plugin closed the connection right after each TLS handshake, having seen the host's certificate:"
    " it most likely refused it (cert_file signed by a CA it does not trust, or no certificate given); if a"
    " TLS-terminating proxy sits in front of it, that proxy's backend may be down instead")
# the handshake was made and the plugin kept the connection: it took the host's certificate (not a failure;
# it ends a TLS failure the pool remembers: pooltls)
TOOK_IT = "the plugin completed the TLS handshake and kept the connection"
# a close this soon after the handshake is an answer to it; a later one is a server's idle timeout
_PROMPT = 0.5


class Unreached(str):
    """The probe's own dial failed (the OS's words: "Connection refused"): no TLS verdict, but the reason a
    connection closed during setup, where gRPC sees only its relay's close (a multiplexed endpoint)."""

    def advice(self, key: str) -> str:
        """What it means for endpoint ``key``, and what to do: a health detail's and a call error's words."""
        return (f"the plugin at {key} cannot be reached: {self} (nothing listens there: the plugin or its gateway is"
                " down or restarting); check that it runs and listens on that address, and that discovery (the"
                " target) names it")


def _context(tls: NetworkTLS | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # The plugin's certificate is gRPC's to judge (it says so plainly when it fails); the probe asks
    # only what the plugin makes of this host's certificate, or whether it speaks TLS at all.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    if tls is not None:
        tls.files().load_into(ctx)  # the set new channels present, not a half-renewed one on disk
    return ctx


def sent_name(endpoint: Endpoint) -> str | None:
    """The name gRPC's own connection to ``endpoint`` sends (SNI) when no server_name is given: the host it
    dials, none for an IP address (TLS names no address), "localhost" for a unix socket (gRPC's authority
    there). The probe sends the same: a made-up name was logged as an ERROR by the plugin's TLS ("No match
    found for server name") at every probe, and a proxy that routes by name would route the probe elsewhere."""
    if endpoint.network == "unix":
        return "localhost"
    host = endpoint.address.rpartition(":")[0].strip("[]")
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host or None
    return None


def _alert(exc: ssl.SSLError) -> bool:
    """Whether the peer sent a TLS alert (it speaks TLS and said no), not a bare close."""
    return "ALERT" in str(exc.reason or "").upper() or "alert" in str(exc).lower()


def probe_taken(endpoint: Endpoint, tls: NetworkTLS | None, timeout: float, verify: bool = False) -> str | None:
    """What a closed connection during setup meant, from one handshake of our own: a TLS failure, TOOK_IT
    when the handshake was made and the plugin kept the connection, an Unreached (a str, no TLS verdict) when
    the probe could not connect at all, or None when nothing is definite.

    With ``tls``: a TLS alert is a refusal; a close within _PROMPT of a completed handshake is
    CLOSED_AFTER_HANDSHAKE, which the caller weighs; with ``verify`` (a multiplexed endpoint), a plugin
    certificate this host does not trust is named too. Without: a peer that answers a TLS handshake
    wants TLS. A connection reset or closed before the handshake finished proves nothing about TLS.
    """
    deadline = time.monotonic() + timeout
    verify = verify and tls is not None
    try:
        ctx = tls.ssl_context() if verify and tls is not None else _context(tls)
    except Exception as exc:  # this host's own files, not the endpoint: no proof either way
        _log.warning("TLS probe of %s skipped: its client context could not be made (%s)", endpoint.key, exc)
        return None
    try:
        sock = dial(endpoint.network, endpoint.address, timeout)
    except (ConnectionRefusedError, FileNotFoundError) as exc:  # nothing listens (a timeout: a silent peer)
        return Unreached(exc.strerror or type(exc).__name__)
    except (OSError, ValueError):
        return None
    try:
        # the name the relay checks (plugbay.network.muxconn), else only sent (SNI)
        relays = endpoint.address.rpartition(":")[0].strip("[]") if verify else None
        conn = ctx.wrap_socket(sock, server_hostname=(tls.server_name if tls else None) or relays
                               or sent_name(endpoint), do_handshake_on_connect=False)
    except (OSError, ValueError):
        sock.close()
        return None
    with conn:
        return _verdict(conn, tls, deadline)


def _verdict(conn: ssl.SSLSocket, tls: NetworkTLS | None, deadline: float) -> str | None:
    try:
        conn.do_handshake()
    except ssl.SSLCertVerificationError as exc:  # only with verify: this host's own check of the plugin
        return tls_failure(str(exc), tls=True) or str(exc)
    except ssl.SSLError as exc:
        if not _alert(exc):
            return None  # EOF or a non-TLS answer mid-handshake: gRPC's own details say the rest
        return (tls_failure(str(exc), tls=True) or REFUSED_CERT) if tls is not None else WANTS_TLS
    except OSError:
        return None
    if tls is None:
        return WANTS_TLS  # it finished a TLS handshake: it is a TLS server
    conn.settimeout(max(min(deadline - time.monotonic(), _PROMPT), 0.05))
    try:
        first = conn.recv(1)
    except ssl.SSLEOFError:
        return CLOSED_AFTER_HANDSHAKE
    except ssl.SSLError as exc:
        return (tls_failure(str(exc), tls=True) or REFUSED_CERT) if _alert(exc) else None
    except (ConnectionResetError, BrokenPipeError):
        return CLOSED_AFTER_HANDSHAKE
    except OSError:  # quiet for _PROMPT: it kept the connection, so it took the certificate
        return TOOK_IT
    return CLOSED_AFTER_HANDSHAKE if first == b"" else TOOK_IT
