"""TLS session resumption for a relay that dials one peer: its later connections skip the full handshake.

An originating relay dials the same peer with the same context for every
connection its channel makes: the Client's second connection (the broker
stream) and any redial. A full handshake with go-plugin's P-521 certificate
costs the loop thread ~1.5 ms of OpenSSL work and the plugin as much again
(its signature), while other plugins' bytes wait on that thread; resuming the
session the peer handed out costs a third of that and no signature.

Only a session from a verified full handshake with this relay's context is
kept, and it is offered only to that context: a peer proves it is the same one
by resuming (only it can read its ticket), and a peer that cannot resume gets
a full handshake, verified as ever. Reading a session is not free (CPython
copies it through DER, ~0.2 ms): each full handshake looks once, where the
ticket has arrived (TLS 1.2: in the handshake; TLS 1.3: before the first
data), and a peer that sends none, or a session that cannot be read, turns
resumption off for the relay.

Where CPython leaks a copy of the session at each read of ``SSLSocket.session``
(:data:`SESSION_READ_LEAKS`), resumption is off from the start: ~7 KB per full
handshake would grow a long-lived host that restarts Go plugins, or redials,
without bound, which a full handshake's CPU does not.
"""

from __future__ import annotations

import ssl
import sys

# python/cpython#116810: the getter duplicated the session and never freed the copy; fixed in
# 3.12.8 and 3.13.1 (3.11 and earlier were never fixed)
SESSION_READ_LEAKS = sys.version_info < (3, 12, 8) or (3, 13) <= sys.version_info < (3, 13, 1)


class Resumption:
    """The session one relay's peer gave it (loop thread only)."""

    def __init__(self) -> None:
        self._context: ssl.SSLContext | None = None
        self._session: ssl.SSLSession | None = None
        # the peer sends no tickets, its session could not be read, or reading it would leak
        self.off = SESSION_READ_LEAKS
        self.resumed = 0  # handshakes that resumed a kept session

    def offer(self, context: ssl.SSLContext) -> ssl.SSLSession | None:
        """The session to offer on a new connection made with ``context`` (None: a full handshake)."""
        return self._session if context is self._context else None

    def handshaken(self, tls: ssl.SSLSocket) -> bool:
        """Count a resumed handshake; True when the caller should call keep() with the first data."""
        if tls.session_reused:
            self.resumed += 1
            return False  # the kept session did it: reading it back again costs, and gains nothing
        if self.off:
            return False
        if tls.version() != "TLSv1.3":  # the ticket, if any, came with the handshake
            self.keep(tls)
            return False
        return True

    def keep(self, tls: ssl.SSLSocket) -> None:
        """Keep the connection's session if it holds a ticket, once per full handshake."""
        try:
            session = tls.session
            ticket = session is not None and session.has_ticket
        except (ValueError, ssl.SSLError, MemoryError):  # e.g. too big for CPython's DER copy
            session, ticket = None, False
        if not ticket:
            self.off = True
            return
        self._context, self._session = tls.context, session
