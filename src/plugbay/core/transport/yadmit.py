"""Which streams the peer of a yamux Session (plugbay.core.transport.yamux) may open: at most
max_streams at once (MAX_STREAMS, or fewer under a low descriptor limit). Session inherits it.
"""

from __future__ import annotations

import logging
import resource
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plugbay.core.transport.ystream import Stream

log = logging.getLogger("plugbay.yamux")

# Streams the peer may have open at once in one session; its SYNs past this are reset (RST), as
# hashicorp/yamux resets a stream past its AcceptBacklog (256). Each open stream costs threads
# (a bridge's or a splice's copy loops), and the peer decides how many it opens.
MAX_STREAMS = 512
_FEWEST_STREAMS = 16  # what a session admits however low the descriptor limit
_PRUNE_EVERY = 1.0  # at the cap, streams ended but not yet dropped are looked for this often at most


def stream_cap() -> int:
    """MAX_STREAMS, or fewer under a low descriptor limit: each stream the peer opens costs two
    descriptors (its bridge's local connection, both ends here), and one session's may take half
    of the soft RLIMIT_NOFILE at most (a plugin whose hard limit is 1024 would otherwise give its
    every descriptor to one host's streams, and could open no file)."""
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        return MAX_STREAMS
    if soft == resource.RLIM_INFINITY:
        return MAX_STREAMS
    return max(_FEWEST_STREAMS, min(MAX_STREAMS, soft // 4))


class Admitting:
    """A Session's admission of the streams its peer opens (the reader thread asks, under ``_lock``)."""

    # the Session's own state, set there: declared for the type checker
    _streams: dict[int, Stream]
    _client: bool
    _next_prune: float
    max_streams: int
    _refusing: bool
    _reader: threading.Thread

    def _admits(self) -> bool:
        """Whether the peer may open one more stream (max_streams; under self._lock)."""
        cap = self.max_streams
        if len(self._streams) < cap:
            return True
        theirs = [s for sid, s in self._streams.items() if (sid % 2 == 1) != self._client]
        now = time.monotonic()
        if len(theirs) >= cap and now >= self._next_prune:
            self._next_prune = now + _PRUNE_EVERY  # a flood at the cap costs no scan per SYN
            for stream in theirs:
                if stream.done:  # ended, not yet forgotten by its owner
                    self._streams.pop(stream.id, None)
            theirs = [s for s in theirs if s.id in self._streams]
        if len(theirs) < cap:
            return True
        if not self._refusing:
            self._refusing = True
            log.warning("%s: the peer has %d streams open, the most one session may%s; resetting its new"
                        " ones until some end", self._reader.name, cap,
                        "" if cap == MAX_STREAMS else " under this process's descriptor limit")
        return False
