"""How many streams its peers opened a process carries at once: in all, per peer address, per session.

A bridged stream costs a worker thread, a local socket pair and its buffers; a
spliced one (the gateway) two threads. yamux's MAX_STREAMS bounds one session
and the front's MAX_SESSIONS the sessions, but their product (131072 streams)
is far past any process's threads and descriptors: one authenticated peer
opening a few sessions full of streams it never reads took the process's
descriptors from every other host. So streams a network peer opens are
counted here against :data:`MAX_CARRIED` per process, against
:data:`MAX_PEER_CARRIED` for all sessions from one peer IP address (a peer may
hold several sessions: with the session cap alone, eight of its sessions took
the whole process's budget and every other host's streams were reset), and
against :data:`MAX_SESSION_CARRIED` per session; past any of them the stream is
reset (RST), as yamux resets one past its session's cap. All are read when a
stream is counted. A peer's count lives only while it carries streams.
"""

from __future__ import annotations

import threading

MAX_CARRIED = 1024  # peer-opened streams carried at once in this process, all sessions together
MAX_PEER_CARRIED = 256  # ... for all sessions of one peer address (at most a quarter of the process's)
MAX_SESSION_CARRIED = 128  # ... in one session (go-plugin's host opens a handful)

_lock = threading.Lock()
_carried = 0
_peers: dict[str, int] = {}  # per peer address, only while it carries streams


class Share:
    """One session's count; every ``take()`` that returned True is matched by one ``give()``.

    ``peer`` is the address the session's connection came from (None: counted
    against the session and process caps only).
    """

    def __init__(self, peer: str | None = None) -> None:
        self._held = 0
        self._peer = peer
        self._refusing = False  # a run of refusals is under way (told once: first_refusal)

    def take(self) -> bool:
        global _carried
        with _lock:
            peer = self._peer
            if (self._held >= MAX_SESSION_CARRIED or _carried >= MAX_CARRIED
                    or (peer is not None and _peers.get(peer, 0) >= MAX_PEER_CARRIED)):
                return False
            self._held += 1
            _carried += 1
            if peer is not None:
                _peers[peer] = _peers.get(peer, 0) + 1
            self._refusing = False
            return True

    def give(self) -> None:
        global _carried
        with _lock:
            self._held -= 1
            _carried -= 1
            peer = self._peer
            if peer is not None:
                left = _peers.pop(peer) - 1
                if left:
                    _peers[peer] = left

    def first_refusal(self) -> str | None:
        """Why take() refused, the first time in a run of refusals; None after (a flood must not flood
        the log). The run ends at the next stream taken."""
        with _lock:
            if self._refusing:
                return None
            self._refusing = True
            if self._held >= MAX_SESSION_CARRIED:
                return f"this session carries {self._held} streams it opened, the most one session may"
            peer = self._peer
            if peer is not None and _peers.get(peer, 0) >= MAX_PEER_CARRIED:
                return (f"the sessions from {peer or 'a local peer'} carry {_peers[peer]} streams it opened,"
                        " the most one peer address may")
            return f"this process carries {_carried} streams its peers opened, the most it may"
