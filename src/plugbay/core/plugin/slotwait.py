"""The handler gate's slots (gate.py), and a local plugin's calls waiting for one.

A waiting call is woken when a slot is handed to it, when its caller cancels (a handler run after the
host was told CANCELLED had side effects nobody asked for, and took the slot from a live waiter) and
when the plugin starts stopping (a handler started then was cut off mid-run by the exit; refused, the
call is marked not sent and a host may resend it). The fast path, a free slot, takes no lock: the free
slots are tokens in a deque, whose pop() and append() are atomic (a threading.BoundedSemaphore's
acquire and release, a Condition's lock taken in Python code each, were most of the gate's cost per call).

Waiters queue first come, first served, each on a Condition of its own over one lock: a freed slot is
handed to the oldest waiter (it never returns to the free slots while a release sees one wait, so a new
call does not overtake the queue; one arriving as a release that saw none puts its slot back may take it)
and wakes that one only: waking every waiter for each freed slot, with 128 waiting,
cost the plugin twice the CPU per call (0.9-1.1 ms, 0.5 ms now). A waiter handed a slot it cannot use
(its caller went away, the plugin is stopping) hands it on: no wake-up is lost.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from itertools import repeat

import grpc

DEFAULT_MAX_WORKERS = 128  # threads start only as calls come: a plugin at idle has the same few
NETWORK_MAX_WORKERS = 32  # on the network: per server and per brokering session (their pools add up)
SLOT_WAIT = 5.0  # how long a local plugin's call waits for a slot (its deadline too) when all are taken
# A waiter also looks at its caller this often: its own cancel callback is all else that wakes it, and
# grpcio runs a call's callbacks only once every operation of the call is done; one that came late (or
# never) would leave a cancelled call holding its place for its whole wait
RECHECK = 1.0

# Why a call did not get a slot: all taken (and no room to wait), its wait ran out, its caller went away,
# the plugin is stopping.
FULL, WAITED, GONE, STOPPING = "full", "waited", "gone", "stopping"


class _Waiter:
    __slots__ = ("woken", "handed")

    def __init__(self, lock: threading.Lock) -> None:
        self.woken = threading.Condition(lock)
        self.handed = False  # a slot was handed to it (it is out of the queue then)


def take_token(tokens: deque[None]) -> bool:
    """One token taken from ``tokens``, if there is one: a count taken and given without a lock (a deque's
    pop() and append() are atomic), where a threading.Semaphore's acquire runs in Python under a lock."""
    try:
        tokens.pop()
    except IndexError:
        return False
    return True


def _over_released() -> ValueError:
    return ValueError("a handler slot was released more often than taken")


class Slots:
    """``limit`` slots; ``wait`` seconds at most ``limit`` calls wait for one (0: none wait)."""

    def __init__(self, limit: int, wait: float = 0.0) -> None:
        self.limit = limit
        self.wait = wait
        self._free: deque[None] = deque(repeat(None, limit))  # a token per free slot
        self._lock = threading.Lock()
        self._queue: deque[_Waiter] = deque()  # read without the lock by release(): see there
        self._stopping = False

    def take(self, context: grpc.ServicerContext) -> str | None:
        """None with a slot taken, else why not (FULL, WAITED, GONE, STOPPING)."""
        if take_token(self._free):
            return None
        if self.wait <= 0:
            return FULL
        left = context.time_remaining()
        until = time.monotonic() + (self.wait if left is None else max(0.0, min(self.wait, left)))
        waiter = _Waiter(self._lock)
        # on the server's poll thread when the call ends (its caller cancelled): wakes this wait only
        context.add_callback(lambda: self._wake(waiter))
        with self._lock:
            if len(self._queue) >= self.limit:
                return FULL
            # queued before it tries the free slots, and waits holding the lock from that try on: a
            # release that missed the queue sees it once its slot is among the free ones (release())
            self._queue.append(waiter)
            if take_token(self._free):
                self._queue.remove(waiter)
                return None
            try:
                return self._wait(waiter, context, until)
            except BaseException:  # a context method raised: the queue must not keep (or hold a slot for) it
                self._leave(waiter)
                raise

    def _wait(self, waiter: _Waiter, context: grpc.ServicerContext, until: float) -> str | None:
        """Under the lock, ``waiter`` queued: None with a slot handed to it, else why not."""
        while True:
            if self._stopping:
                why = STOPPING
            elif not context.is_active():  # also when cancelled just as the slot came
                why = GONE
            elif waiter.handed:
                return None
            elif (now := time.monotonic()) >= until:
                why = WAITED
            else:
                waiter.woken.wait(min(until - now, RECHECK))
                continue
            self._leave(waiter)
            return why

    def _leave(self, waiter: _Waiter) -> None:
        """Under the lock: ``waiter`` gives up; a slot handed to it goes to the next waiter, else back to
        the free slots."""
        if not waiter.handed:
            if waiter in self._queue:
                self._queue.remove(waiter)
        elif not self._hand_on():
            self._free.append(None)

    def release(self) -> None:
        if self._queue:
            # the slot goes back under the lock: a call queueing meanwhile tries the free slots under it
            # too, so it either takes this slot or is handed it, never waits beside a free one
            with self._lock:
                # the check below, here too (only here, off the fast path): the waiter seen may have left
                # since, or been handed a slot another release freed, or the plugin is stopping and its
                # waiters not gone yet, and every slot be free: the slot would go to a waiter, or back to
                # the free slots, past the cap
                if len(self._free) >= self.limit:
                    raise _over_released()
                if not self._hand_on():
                    self._free.append(None)
            return
        if len(self._free) >= self.limit:  # a BoundedSemaphore's check: the cap would grow
            raise _over_released()
        self._free.append(None)
        # A waiter queues itself (under the lock) before it tries the free slots, and waits holding the
        # lock from that try on: one queued after the look above either got this slot from the
        # free slots or waits now, and is handed it here.
        if self._queue:
            with self._lock:
                if self._queue and take_token(self._free) and not self._hand_on():
                    self._free.append(None)

    def _hand_on(self) -> bool:
        """Under the lock: a slot to the oldest waiter (woken), False when none waits or the plugin is
        stopping (waiters are refused then: the slot goes back to the free slots)."""
        if not self._queue or self._stopping:
            return False
        waiter = self._queue.popleft()
        waiter.handed = True
        waiter.woken.notify()
        return True

    def stop_waiting(self) -> None:
        """The plugin is stopping: waiting calls, and calls that would wait, are refused."""
        with self._lock:
            self._stopping = True
            for waiter in self._queue:
                waiter.woken.notify()

    def _wake(self, waiter: _Waiter) -> None:
        with self._lock:
            waiter.woken.notify()
