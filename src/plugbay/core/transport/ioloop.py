"""Every plugin's pipes, exits and TLS relays on the host's one loop thread, without a thread each.

A host with many live plugins used to spend a thread per pipe and one per exit
watcher on each. The shared loop waits on all of their file descriptors at
once and runs a callback on the loop thread when one is readable. It runs on
the process's one asyncio loop (plugbay.core.transport.aioloop, thread
"plugbay-io", which the host's grpc.aio broker streams share): the first
registration takes a lease on it and the last one gone gives it back, so a
host with no plugin left has no plugbay thread (:meth:`IOLoop.join_idle`
joins it).

Callbacks run on the loop thread, one at a time: they must not block (read
what is there, hand it on). One that raises is logged and its registration is
dropped; the loop goes on serving the others.

For sockets driven both ways (the OpenSSL relay), a registration may also
watch write readiness and change what it watches (:meth:`Registration.want`,
on the loop thread, applied at once), and :meth:`IOLoop.call_later` /
:meth:`IOLoop.call_soon` run a function on the loop thread (timeouts, a
close() asked from another thread). A socket both readable and writable gets
one callback per event (``fired`` says which).
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
import time
from collections.abc import Callable
from typing import Any

from plugbay.core.transport import aioloop

_log = logging.getLogger("plugbay.io")
_JOIN_TIMEOUT = 5.0

Callback = Callable[[], None]
Ready = Callable[[], "bool | None"]  # returns False to stop watching (end of file, done)
READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


class Registration:
    """One watched file descriptor; cancel() stops watching it (idempotent, thread-safe)."""

    def __init__(self, loop: IOLoop, fd: int, on_ready: Ready, on_cancel: Callback | None,
                 events: int = READ) -> None:
        self.loop = loop
        self.fd = fd
        self.on_ready = on_ready
        self.on_cancel = on_cancel
        self.cancelled = False
        self.events = events  # READ | WRITE, or 0: registered, watching nothing for now
        self.fired = 0  # during on_ready(): the event that fired
        self.added = False  # the loop took the add (loop thread only)
        self.watched = 0  # the events the asyncio loop watches for it (loop thread only)
        self.first: Callback | None = None  # run as the loop takes the add (IOLoop.add)

    def cancel(self) -> None:
        """Stop watching; ``on_cancel`` runs on the loop thread. Never blocks on the loop."""
        self.loop.remove(self)

    def want(self, events: int) -> None:
        """Watch for ``events`` (READ | WRITE; 0: nothing until the next want) from now on.

        Cheap on the loop thread (where callbacks run): applied in place; from
        another thread it is queued like add().
        """
        if events != self.events:
            self.events = events
            self.loop.modify(self)


class Timer:
    """A call_later() entry; cancel() before it is due and it does not run (loop thread only).

    cancel() also lets go of it (and of what ``func`` holds): the loop may live on
    for other registrations long after its owner ended.
    """

    __slots__ = ("cancelled", "func", "handle", "owner", "when")

    def __init__(self, when: float, func: Callback, owner: IOLoop | None = None) -> None:
        self.when = when
        self.func = func
        self.cancelled = False
        self.handle: Any = None  # the asyncio TimerHandle
        self.owner = owner

    def cancel(self) -> None:
        self.cancelled = True
        if self.handle is not None:
            self.handle.cancel()
        if self.owner is not None:
            self.owner._timers.discard(self)


class IOLoop:
    """The shared loop. Use :func:`shared`; a private instance (its own thread) is for tests of the loop itself."""

    def __init__(self, name: str = "plugbay-io", aio: Callable[[], aioloop.AioLoop] | None = None) -> None:
        self.name = name
        if aio is None:
            private = aioloop.AioLoop(name)

            def aio() -> aioloop.AioLoop:
                return private
        self._aio = aio  # looked up at each start: a forked child's shared loop is a new one
        self._lock = threading.Lock()
        self._lease: aioloop.Lease | None = None  # held while anything is registered or queued
        self._live: set[Registration] = set()  # added and not cancelled, as callers see it
        self._queued = 0  # operations handed to the loop thread and not run yet
        self._active: set[Registration] = set()  # loop thread only: the adds it took
        self._fds: dict[int, Registration] = {}  # loop thread only
        self._timers: set[Timer] = set()  # loop thread only

    # ------------------------------------------------------------- callers

    def add(self, fd: int, on_ready: Ready, on_cancel: Callback | None = None, events: int = READ,
            first: Callback | None = None) -> Registration:
        """Call ``on_ready()`` on the loop thread whenever ``fd`` is readable (or ``events``), until cancelled.

        ``on_ready`` returning False ends the registration as cancel() would.
        ``on_cancel()`` runs on the loop thread once the registration is dropped
        (after cancel(), or after on_ready raised); the fd is not closed here.
        Whoever closes the fd calls cancel() first, so that a new fd with the
        same number is never mistaken for it. ``first()`` runs on the loop
        thread as it takes the add, before any ``on_ready()`` (no second post).
        """
        reg = Registration(self, fd, on_ready, on_cancel, events)
        reg.first = first
        with self._lock:
            self._live.add(reg)
            self._post(self._add, reg)
        return reg

    def remove(self, reg: Registration) -> None:
        """Stop watching ``reg``; its on_cancel runs on the loop thread."""
        with self._lock:
            if reg not in self._live:
                return
            self._live.discard(reg)
            self._post(self._remove, reg)

    def modify(self, reg: Registration) -> None:
        """Apply ``reg.events`` (see Registration.want)."""
        if self.on_loop():
            self._watch(reg)
            return
        with self._lock:
            if reg in self._live:
                self._post(self._watch, reg)

    def call_soon(self, func: Callback) -> None:
        """Run ``func()`` on the loop thread (starting the loop if none runs; it ends again when idle)."""
        with self._lock:
            self._post(self._call, func)

    def call_later(self, delay: float, func: Callback) -> Timer:
        """Run ``func()`` on the loop thread in ``delay`` seconds. Loop thread only (from a callback).

        Timers do not keep the loop alive: pending ones are dropped when the
        last registration goes (their owners cancel them on close anyway).
        """
        lease = self._lease
        assert lease is not None and self.on_loop(), "call_later() is for the loop thread; use call_soon()"
        timer = Timer(time.monotonic() + delay, func, self)
        timer.handle = lease.loop.call_later(delay, self._fire, timer)
        self._timers.add(timer)
        return timer

    def on_loop(self) -> bool:
        """True on the loop thread (inside a callback)."""
        return self._aio().on_loop()

    def join_idle(self, timeout: float = _JOIN_TIMEOUT) -> bool:
        """Wait for the loop thread to end if nothing is registered any more; True if no thread is left.

        Called by whoever removed the last registration, so a closed host keeps
        no plugbay thread. The thread stays while another user of the asyncio
        loop (a broker stream) holds it: that is not this loop's (True then).
        A no-op on the loop thread itself.
        """
        deadline = time.monotonic() + timeout
        if self.on_loop():
            return not self.registrations
        while True:  # in slices: a plugin registered meanwhile keeps it running
            with self._lock:
                if self._live:
                    return False
                if self._lease is None:
                    break
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return self._aio().join_idle(max(deadline - time.monotonic(), 0.0))

    @property
    def running(self) -> bool:
        """True while this loop holds the thread (something registered, or a call queued)."""
        with self._lock:
            return self._lease is not None

    @property
    def registrations(self) -> int:
        with self._lock:
            return len(self._live)

    # ------------------------------------------------------------- any thread, under the lock

    def _post(self, func: Callable[[Any], None], arg: Any) -> None:
        """Run ``func(arg)`` on the loop thread, after what was posted before (taking the loop if idle)."""
        lease = self._lease
        if lease is None:
            lease = self._lease = self._aio().acquire()
        self._queued += 1
        if lease.thread is threading.current_thread():
            lease.loop.call_soon(self._run_posted, func, arg)
        else:
            lease.loop.call_soon_threadsafe(self._run_posted, func, arg)

    # ------------------------------------------------------------- the loop thread

    def _run_posted(self, func: Callable[[Any], None], arg: Any) -> None:
        try:
            func(arg)
        finally:
            with self._lock:
                self._queued -= 1
            self._settle()

    def _settle(self) -> None:
        """Give the loop back once nothing is registered or queued (its timers are dropped)."""
        with self._lock:
            if self._queued or self._live or self._active or self._lease is None:
                return
            lease, self._lease = self._lease, None
        timers, self._timers = self._timers, set()
        for timer in timers:
            timer.cancel()
        lease.release()  # the last user: the thread stops once this callback returns

    def _add(self, reg: Registration) -> None:
        if reg.first is not None:
            self._call(reg.first)
        if reg.fd in self._fds:
            _log.debug("cannot watch fd %s: it is watched already", reg.fd)
            self._finish(reg)
            return
        try:
            self._apply(reg)
        except (OSError, ValueError) as exc:
            _log.debug("cannot watch fd %s: %s", reg.fd, exc)
            self._unwatch(reg)
            self._finish(reg)
            return
        self._active.add(reg)
        self._fds[reg.fd] = reg
        reg.added = True

    def _remove(self, reg: Registration) -> None:
        if reg in self._active:
            self._drop(reg)

    def _watch(self, reg: Registration) -> None:
        """On the loop thread: watch ``reg.events`` for ``reg``."""
        if reg.cancelled or not reg.added:
            return  # not added yet: the add watches reg.events as they are then
        try:
            self._apply(reg)
        except (OSError, ValueError) as exc:  # a closed fd: its owner is closing it
            _log.debug("cannot change what fd %s is watched for: %s", reg.fd, exc)

    def _apply(self, reg: Registration) -> None:
        loop = self._loop()
        change = reg.events ^ reg.watched
        if change & READ:
            if reg.events & READ:
                loop.add_reader(reg.fd, self._on_read, reg)
            else:
                loop.remove_reader(reg.fd)
            reg.watched ^= READ
        if change & WRITE:
            if reg.events & WRITE:
                loop.add_writer(reg.fd, self._on_write, reg)
            else:
                loop.remove_writer(reg.fd)
            reg.watched ^= WRITE

    def _unwatch(self, reg: Registration) -> None:
        loop = self._loop()
        for bit, remove in ((READ, loop.remove_reader), (WRITE, loop.remove_writer)):
            if reg.watched & bit:
                try:
                    remove(reg.fd)
                except (OSError, ValueError):
                    pass
        reg.watched = 0

    def _loop(self) -> Any:
        lease = self._lease
        assert lease is not None
        return lease.loop

    def _on_read(self, reg: Registration) -> None:
        if reg in self._active:
            reg.fired = READ
            self._ready(reg)

    def _on_write(self, reg: Registration) -> None:
        if reg in self._active:
            reg.fired = WRITE
            self._ready(reg)

    def _fire(self, timer: Timer) -> None:
        self._timers.discard(timer)
        if not timer.cancelled:
            self._call(timer.func)

    def _ready(self, reg: Registration) -> None:
        try:
            keep = reg.on_ready()
        except Exception:
            _log.exception("a callback of the shared I/O loop failed; fd %s is no longer watched", reg.fd)
            keep = False
        if keep is False and reg in self._active:
            with self._lock:
                self._live.discard(reg)
            self._drop(reg)
            self._settle()

    def _drop(self, reg: Registration) -> None:
        self._active.discard(reg)
        if self._fds.get(reg.fd) is reg:
            del self._fds[reg.fd]
        self._unwatch(reg)
        self._finish(reg)

    def _finish(self, reg: Registration) -> None:
        with self._lock:
            self._live.discard(reg)
        if not reg.cancelled:
            reg.cancelled = True
            if reg.on_cancel is not None:
                self._call(reg.on_cancel)

    @staticmethod
    def _call(func: Callback) -> None:
        try:
            func()
        except Exception:
            _log.exception("a callback of the shared I/O loop failed")


_SHARED = IOLoop(aio=aioloop.shared)


def _forget_in_child() -> None:
    """A forked child has no loop thread (nor its parent's plugins): start afresh there."""
    global _SHARED
    _SHARED = IOLoop(aio=aioloop.shared)


os.register_at_fork(after_in_child=_forget_in_child)


def shared() -> IOLoop:
    """The host process's one loop."""
    return _SHARED
