"""The handler gate's slots (gate.py), and a local plugin's calls waiting for one.

A waiting call is woken when a slot frees, when its caller cancels (a handler run after the host was
told CANCELLED had side effects nobody asked for, and took the slot from a live waiter) and when the
plugin starts stopping (a handler started then was cut off mid-run by the exit; refused, the call is
marked not sent and a host may resend it). The fast path, a free slot, takes no lock but the
semaphore's.
"""

from __future__ import annotations

import threading
import time

import grpc

DEFAULT_MAX_WORKERS = 128  # threads start only as calls come: a plugin at idle has the same few
NETWORK_MAX_WORKERS = 32  # on the network: per server and per brokering session (their pools add up)
SLOT_WAIT = 5.0  # how long a local plugin's call waits for a slot (its deadline too) when all are taken

# Why a call did not get a slot: all taken (and no room to wait), its wait ran out, its caller went away,
# the plugin is stopping.
FULL, WAITED, GONE, STOPPING = "full", "waited", "gone", "stopping"


class Slots:
    """``limit`` slots; ``wait`` seconds at most ``limit`` calls wait for one (0: none wait)."""

    def __init__(self, limit: int, wait: float = 0.0) -> None:
        self.limit = limit
        self.wait = wait
        self._free = threading.BoundedSemaphore(limit)
        self._changed = threading.Condition(threading.Lock())
        self._waiting = 0  # read without the lock by release(): see there
        self._stopping = False

    def take(self, context: grpc.ServicerContext) -> str | None:
        """None with a slot taken, else why not (FULL, WAITED, GONE, STOPPING)."""
        if self._free.acquire(blocking=False):
            return None
        if self.wait <= 0:
            return FULL
        left = context.time_remaining()
        until = time.monotonic() + (self.wait if left is None else max(0.0, min(self.wait, left)))
        with self._changed:
            if self._waiting >= self.limit:
                return FULL
            self._waiting += 1
        try:
            # on the server's poll thread when the call ends (its caller cancelled): wakes the wait
            context.add_callback(self._wake_all)
            with self._changed:
                while True:
                    if self._stopping:
                        return STOPPING
                    if not context.is_active():
                        return GONE
                    if self._free.acquire(blocking=False):
                        break
                    now = time.monotonic()
                    if now >= until:
                        return WAITED
                    self._changed.wait(until - now)
        finally:
            with self._changed:
                self._waiting -= 1
        if not context.is_active():  # cancelled just as the slot came: the next waiter gets it
            self.release()
            return GONE
        return None

    def release(self) -> None:
        self._free.release()
        # A waiter counts itself (under the lock) before it tries the semaphore, and waits holding the
        # lock from that try on: a release it missed sees the count and notifies once it waits. All are
        # woken: one that was cancelled meanwhile leaves the slot to the next.
        if self._waiting:
            self._wake_all()

    def stop_waiting(self) -> None:
        """The plugin is stopping: waiting calls, and calls that would wait, are refused."""
        self._stopping = True
        self._wake_all()

    def _wake_all(self) -> None:
        with self._changed:
            self._changed.notify_all()
