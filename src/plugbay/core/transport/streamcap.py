"""How many streams its peers opened a process carries at once, in all, and per session.

A bridged stream costs a worker thread, a local socket pair and its buffers; a
spliced one (the gateway) two threads. yamux's MAX_STREAMS bounds one session
and the front's MAX_SESSIONS the sessions, but their product (131072 streams)
is far past any process's threads and descriptors: one authenticated peer
opening a few sessions full of streams it never reads took the process's
descriptors from every other host. So streams a network peer opens are
counted here against :data:`MAX_CARRIED` per process, and against
:data:`MAX_SESSION_CARRIED` per session, so that one session cannot take the
whole process's budget; past either the stream is reset (RST), as yamux resets
one past its session's cap. Both are read when a stream is counted.
"""

from __future__ import annotations

import threading

MAX_CARRIED = 1024  # peer-opened streams carried at once in this process, all sessions together
MAX_SESSION_CARRIED = 128  # ... in one session (go-plugin's host opens a handful)

_lock = threading.Lock()
_carried = 0


class Share:
    """One session's count; every ``take()`` that returned True is matched by one ``give()``."""

    def __init__(self) -> None:
        self._held = 0
        self.refusing = False  # the owner logs the first refusal of a run only

    def take(self) -> bool:
        global _carried
        with _lock:
            if self._held >= MAX_SESSION_CARRIED or _carried >= MAX_CARRIED:
                return False
            self._held += 1
            _carried += 1
            self.refusing = False
            return True

    def give(self) -> None:
        global _carried
        with _lock:
            self._held -= 1
            _carried -= 1

    def why_refused(self) -> str:
        with _lock:
            if self._held >= MAX_SESSION_CARRIED:
                return f"this session carries {self._held} streams it opened, the most one session may"
            return f"this process carries {_carried} streams its peers opened, the most it may"
