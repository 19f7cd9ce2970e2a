"""One peer address's share of a network server's budget, so one peer never takes all of it.

A network plugin's budgets (core/plugin/gate.py: the reads of requests not yet sent, plugbay's own
calls, health Watches) bound the whole process; the server's stream cap bounds one connection. One
peer with a valid certificate opening a few connections full of streams whose request never comes
took a whole budget, and every other host's calls were refused until it let go. So what one peer
address holds is counted here too, against a share of the budget (as core/transport/streamcap.py
counts the multiplexed side's streams per peer). A peer's count lives only while it holds something.

A peer grpcio names without an IP address (a unix socket's) is counted against the budget alone:
behind serve()'s network front every plain-gRPC connection arrives over its private unix socket,
whoever made it, so counting them as one peer would let one stalling host take that one share from
every host the front serves; on a ``unix:`` listen address the peers are processes of this machine.
"""

from __future__ import annotations

import threading
from urllib.parse import unquote

PEER_SHARE = 2  # one peer address holds at most 1/PEER_SHARE of a network budget


def peer_address(peer: str) -> str | None:
    """The IP address of a grpcio peer ("ipv4:1.2.3.4:5", "ipv6:%5B::1%5D:5"); None for any other (a
    unix socket's peer, which has none: behind serve()'s network front every connection is one)."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    return unquote(rest).rpartition(":")[0].strip("[]") or None


def share_of(budget: int) -> int:
    """A peer address's share of ``budget``: the rest is always left to the other peers."""
    return max(budget // PEER_SHARE, 1)


class PeerShares:
    """How much each peer address holds, each at most ``share``; every take() that returned None is
    matched by one give() of the same peer."""

    def __init__(self, share: int) -> None:
        self.share = share
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}  # per peer address, only while it holds some

    def take(self, peer: str | None) -> int | None:
        """None when taken (always for a peer without an address), else what ``peer`` holds: its share."""
        if peer is None:
            return None
        with self._lock:
            held = self._held.get(peer, 0)
            if held >= self.share:
                return held
            self._held[peer] = held + 1
            return None

    def give(self, peer: str | None) -> None:
        if peer is None:
            return
        with self._lock:
            left = self._held.pop(peer) - 1
            if left:
                self._held[peer] = left
