"""Streams the peer opened before its knock arrived (a plugbay peer that knocks eagerly).

go-plugin's dialer knocks, waits for the ack, then opens the stream: one
broker-stream round trip before any byte of the brokered connection moves.
A plugbay host tells the plugbay plugins it launches (ENV_MUX_HOLDS_STREAMS)
that it holds a stream arriving before its knock, so they open the stream
right after knocking and the gRPC handshake travels while the knock does;
they still wait for the ack (its error) before dial() returns, and reset
the stream when the knock fails or times out.

Bounded: at most ``limit`` streams are held, each for at most ``hold``
seconds (the owner calls expire() periodically); a stream the peer reset
is dropped.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from plugbay.core.transport.ystream import Stream

# longer than a dialer waits for its ack (5 s by default, as go-plugin), after which it resets
# the stream itself: a knock that comes before accept_and_serve keeps its stream until then
HOLD = 10.0
LIMIT = 8  # a dialer has one knock in flight (dial_lock); more held streams are not from one


class HeldStreams:
    def __init__(self, hold: float = HOLD, limit: int = LIMIT) -> None:
        self._hold = hold
        self._limit = limit
        self._lock = threading.Lock()
        self._streams: deque[tuple[Stream, float]] = deque()

    def hold(self, stream: Stream) -> bool:
        """Keep ``stream`` for the next knock; False (the caller resets it) when full."""
        with self._lock:
            self._drop_dead()
            if len(self._streams) >= self._limit:
                return False
            self._streams.append((stream, time.monotonic() + self._hold))
            return True

    def pop(self) -> Stream | None:
        """The oldest held stream that is still open, for a knock that just arrived."""
        with self._lock:
            self._drop_dead()
            return self._streams.popleft()[0] if self._streams else None

    def pop_oldest(self, held_by: float) -> Stream | None:
        """The oldest held stream, even one the peer reset (its dialer gave up on its knock), if it
        was held by ``held_by`` (a time.monotonic() value); a later one is a later knock's."""
        with self._lock:
            if not self._streams or self._streams[0][1] - self._hold > held_by:
                return None
            return self._streams.popleft()[0]

    def expire(self) -> None:
        """Reset streams whose knock did not come in time, without waiting: the owner's loop that calls
        this also ticks the keepalive, and a writer stuck on a full socket may hold the send lock (the
        RST goes behind it)."""
        now = time.monotonic()
        with self._lock:
            late = [s for s, deadline in self._streams if deadline <= now]
            self._streams = deque((s, d) for s, d in self._streams if d > now)
        for stream in late:
            stream.reset(wait=False)

    def count(self) -> int:
        """How many live streams are held."""
        with self._lock:
            self._drop_dead()
            return sum(1 for s, _ in self._streams if not s.done)

    def clear(self) -> None:
        for stream in self.drain():
            stream.reset()

    def drain(self) -> list[Stream]:
        """Take every held stream out (the caller resets them, outside its own locks)."""
        with self._lock:
            streams, self._streams = [s for s, _ in self._streams], deque()
        return streams

    def _drop_dead(self) -> None:
        while self._streams and self._streams[0][0].done:
            self._streams.popleft()
