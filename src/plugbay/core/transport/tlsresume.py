"""TLS session resumption for a relay that dials one peer: its later connections skip the full handshake.

An originating relay dials the same peer with the same context for every
connection its channel makes: the Client's second connection (the broker
stream) and any redial. A full handshake with go-plugin's P-521 certificate
costs the loop thread ~1.5 ms of OpenSSL work and the plugin as much again
(its signature), while other plugins' bytes wait on that thread; resuming the
session the peer handed out costs a third of that and no signature.

Only a session from a verified handshake with this relay's context is kept,
and it is offered only to that context: a peer proves it is the same one by
resuming (only it can read its ticket), and a peer that cannot resume gets a
full handshake, verified as ever. The newest ticket replaces the older one.
"""

from __future__ import annotations

import ssl


class Resumption:
    """The newest session one relay's peer gave it (loop thread only)."""

    def __init__(self) -> None:
        self._context: ssl.SSLContext | None = None
        self._session: ssl.SSLSession | None = None
        self.resumed = 0  # handshakes that resumed a kept session

    def offer(self, context: ssl.SSLContext) -> ssl.SSLSession | None:
        """The session to offer on a new connection made with ``context`` (None: a full handshake)."""
        return self._session if context is self._context else None

    def handshaken(self, tls: ssl.SSLSocket) -> None:
        if tls.session_reused:
            self.resumed += 1

    def keep(self, tls: ssl.SSLSocket) -> bool:
        """Keep the connection's session once it holds a ticket (TLS 1.3 sends it after the
        handshake, read with the first bytes); True when kept, so the caller stops asking."""
        session = tls.session
        if session is None or not session.has_ticket:
            return False
        self._context, self._session = tls.context, session
        return True
