"""Fair turns for the gateway's session children: a few starts at once, taken in turn by peer address.

With --multiplex every brokering session a host opens starts a child process
of its own (sessions.py), and a start costs a Python plugin ~100 ms of CPU.
The per-address session cap bounds how many sessions a peer holds, not how
fast it opens and closes them: one host reconnecting in a loop (a bug, or
worse) started children back to back, and on a small machine another host's
first answer took 17-20 s instead of 0.4 s. So at most ``slots`` children
start at once, and a free slot goes to the peer address whose turn it is
(round robin over the addresses waiting; first come first served within one),
so a churning peer waits behind itself while every other host's session
starts next. Hosts behind one address (a NAT) share its turns, as they share
its session cap. A session that ends while it waits leaves the queue.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from plugbay.errors import GatewayError

DEFAULT_MAX_CHILD_STARTS = 4
_POLL = 0.1  # how often a waiter looks at its own session's end (close() also wakes every waiter)


class FairStarts:
    """At most ``slots`` child starts at once, granted round robin across peer addresses."""

    def __init__(self, slots: int = DEFAULT_MAX_CHILD_STARTS) -> None:
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots must be a positive int, got {slots!r}")
        self.slots = slots
        self._cond = threading.Condition()
        self._running = 0
        self._waiting: OrderedDict[str, deque[object]] = OrderedDict()  # peer -> its tickets; the first's turn next
        self.granted: list[str] = []  # the peers granted, in order (the last 64: for tests and logs)

    @contextmanager
    def turn(self, peer: str, deadline: float, ended: Callable[[], bool]) -> Iterator[None]:
        """Hold one of the slots for a child's start; waits for this peer's turn.

        Raises GatewayError when ``deadline`` (time.monotonic()) passes first, or when ``ended()``
        says the session is gone (the caller then has nothing to start)."""
        ticket = object()
        with self._cond:
            self._waiting.setdefault(peer, deque()).append(ticket)
            try:
                while not (self._running < self.slots and self._first() is ticket):
                    left = deadline - time.monotonic()
                    if ended():
                        raise GatewayError("the brokering session ended while its plugin waited to start")
                    if left <= 0:
                        raise GatewayError(
                            f"{self.slots} brokering sessions' plugins were starting for the whole start_timeout;"
                            " this session's could not start (raise --max-child-starts, or start_timeout)")
                    self._cond.wait(min(left, _POLL))
            except BaseException:
                self._leave(peer, ticket)
                self._cond.notify_all()  # the next ticket of this peer may be first now
                raise
            self._leave(peer, ticket)
            if peer in self._waiting:  # its next start waits behind every other peer's
                self._waiting.move_to_end(peer)
            self._running += 1
            self.granted = [*self.granted[-63:], peer]
            if self._waiting and self._running < self.slots:  # another slot is free: its waiter need not poll
                self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def wake(self) -> None:
        """A session ended: its waiter stops waiting now, not at its next look."""
        with self._cond:
            self._cond.notify_all()

    def _first(self) -> object | None:
        for tickets in self._waiting.values():
            return tickets[0]
        return None

    def _leave(self, peer: str, ticket: object) -> None:
        tickets = self._waiting.get(peer)
        if tickets is None:
            return
        try:
            tickets.remove(ticket)
        except ValueError:
            return
        if not tickets:
            del self._waiting[peer]
