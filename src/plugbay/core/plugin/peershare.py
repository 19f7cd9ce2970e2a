"""One peer address's share of a network server's budget, so one peer never takes all of it.

A network plugin's budgets (core/plugin/gate.py: the reads of requests not yet sent, plugbay's own
calls, health Watches) bound the whole process; the server's stream cap bounds one connection. One
peer with a valid certificate opening a few connections full of streams whose request never comes
took a whole budget, and every other host's calls were refused until it let go. So what one peer
address holds is counted here too, against a share of the budget (as core/transport/streamcap.py
counts the multiplexed side's streams per peer). A peer's count lives only while it holds something.

Behind serve()'s network front every plain-gRPC connection arrives over the server's private unix
socket, so grpcio sees no IP address there: the front binds each connection's end to an abstract unix
name of its own (``FRONT_PEER`` and a random token) and records which peer address it relays for
(:func:`front_peer`); grpcio names that peer ``unix-abstract:<name>``, and :func:`peer_address` maps it
back. Any other peer without an IP address (a ``unix:`` listen address's: processes of this machine)
counts against the whole budget alone.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from urllib.parse import unquote

PEER_SHARE = 2  # one peer address holds at most 1/PEER_SHARE of a network budget
FRONT_PEER = "plugbay-peer-"  # the abstract unix names the front binds its connections to the server with

_front_lock = threading.Lock()
_front_peers: dict[str, str] = {}  # abstract name -> the peer address the front relays for, while it does


def peer_address(peer: str) -> str | None:
    """The IP address of a grpcio peer ("ipv4:1.2.3.4:5", "ipv6:%5B::1%5D:5", or a front connection's
    "unix-abstract:plugbay-peer-..."); None for any other (a unix socket's peer, which has none)."""
    kind, _, rest = peer.partition(":")
    if kind == "unix-abstract" and rest.startswith(FRONT_PEER):
        with _front_lock:
            return _front_peers.get(rest)
    if kind not in ("ipv4", "ipv6"):
        return None
    return unquote(rest).rpartition(":")[0].strip("[]") or None


def front_peer(address: str) -> tuple[str, Callable[[], None]]:
    """A fresh abstract unix name (no leading NUL) for a front connection relayed for ``address``, and the
    function that forgets it (when that connection closes)."""
    while True:
        name = FRONT_PEER + os.urandom(12).hex()  # secrets.token_hex's bytes, without its hmac/hashlib import
        with _front_lock:
            if name not in _front_peers:
                _front_peers[name] = address
                break

    def forget() -> None:
        with _front_lock:
            _front_peers.pop(name, None)
    return name, forget


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
