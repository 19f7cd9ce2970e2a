"""A network front's refusal of a brokering session: one yamux GoAway with a code of plugbay's own.

A plugbay network front (plugbay.core.plugin.netmux) that refuses a host's
yamux session (one of its caps reached) sends this GoAway before it closes the
connection, so the host's session ends with a reason it can name at once
(plugbay.network.muxconn turns it into SessionRefusedError) instead of
reconnecting until its start_timeout and blaming the connection.

hashicorp/yamux knows the GoAway codes 0-2 only: a Go peer given one of these
logs "unexpected go away" and ends the session, as it would end any refused
one. No Go peer meets them through plugbay's front: go-plugin hosts reach a
network plugin over plain gRPC, and only plugbay hosts open sessions there.
"""

from __future__ import annotations

from plugbay.core.transport.ystream import _HDR, GO_AWAY

REFUSED_PEER = 0x70620001  # the host's address holds as many sessions as the front allows one address
REFUSED_FULL = 0x70620002  # the front holds as many sessions as it allows in all
REFUSED = "the plugin refused the session"  # how the close reason of a refused session starts
REFUSALS = {
    REFUSED_PEER: ("this host's IP address holds as many brokering sessions as the plugin allows one address"
                   " (its max_peer_sessions)"),
    REFUSED_FULL: "the plugin holds as many brokering sessions as it allows in all (MAX_SESSIONS)",
}


def refusal_frame(code: int) -> bytes:
    """The GoAway a front sends, ahead of closing, to a session it refuses for ``code``."""
    return _HDR.pack(0, GO_AWAY, 0, 0, code)


def refusal_reason(code: int) -> str | None:
    """A session's close reason for a GoAway with ``code``: None unless ``code`` is a refusal."""
    what = REFUSALS.get(code)
    return None if what is None else f"{REFUSED}: {what}"


def refused(reason: str) -> bool:
    """Whether a session that ended for ``reason`` was refused by the front."""
    return reason.startswith(REFUSED)
