"""One selector thread for the whole host process: every plugin's pipes and exit, without a thread each.

A host with many live plugins used to spend a thread per pipe and one per exit
watcher on each. The shared loop ("plugbay-io") waits on all of their file
descriptors at once (epoll through :mod:`selectors`) and runs a callback on
the loop thread when one is readable. It starts on the first registration and
stops, joined, when the last one is removed, so a host with no plugin left has
no plugbay thread.

Callbacks run on the loop thread, one at a time: they must not block (read
what is there, hand it on). One that raises is logged and its registration is
dropped; the loop goes on serving the others.

For sockets driven both ways (the OpenSSL relay), a registration may also
watch write readiness and change what it watches (:meth:`Registration.want`,
on the loop thread, no wake-up needed), and :meth:`IOLoop.call_later` /
:meth:`IOLoop.call_soon` run a function on the loop thread (timeouts, a
close() asked from another thread).
"""

from __future__ import annotations

import logging
import heapq
import os
import selectors
import threading
import time
from collections.abc import Callable

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
        self.fired = 0  # during on_ready(): the events that fired
        self.added = False  # the loop took the add (loop thread only)
        self.watched = False  # in the selector (with events != 0); loop thread only

    def cancel(self) -> None:
        """Stop watching; ``on_cancel`` runs on the loop thread. Never blocks on the loop."""
        self.loop.remove(self)

    def want(self, events: int) -> None:
        """Watch for ``events`` (READ | WRITE; 0: nothing until the next want) from now on.

        Cheap on the loop thread (where callbacks run): the selector is changed
        in place; from another thread it is queued like add().
        """
        if events != self.events:
            self.events = events
            self.loop.modify(self)


class Timer:
    """A call_later() entry; cancel() before it is due and it does not run (loop thread only)."""

    __slots__ = ("when", "func", "cancelled")

    def __init__(self, when: float, func: Callback) -> None:
        self.when = when
        self.func = func
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: Timer) -> bool:
        return self.when < other.when


class IOLoop:
    """The shared loop. Use :func:`shared`; a private instance is for tests of the loop itself."""

    def __init__(self, name: str = "plugbay-io") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pending: list[tuple[str, Registration | Callback]] = []
        self._live: set[Registration] = set()  # added and not cancelled, as callers see it
        self._wake_w: int | None = None
        self._selector: selectors.BaseSelector | None = None  # the running loop's (loop thread only)
        self._timers: list[Timer] = []  # a heap (loop thread only)

    # ------------------------------------------------------------- callers

    def add(self, fd: int, on_ready: Ready, on_cancel: Callback | None = None, events: int = READ) -> Registration:
        """Call ``on_ready()`` on the loop thread whenever ``fd`` is readable (or ``events``), until cancelled.

        ``on_ready`` returning False ends the registration as cancel() would.
        ``on_cancel()`` runs on the loop thread once the registration is dropped
        (after cancel(), or after on_ready raised); the fd is not closed here.
        Whoever closes the fd calls cancel() first, so that a new fd with the
        same number is never mistaken for it.
        """
        reg = Registration(self, fd, on_ready, on_cancel, events)
        with self._lock:
            self._live.add(reg)
            self._pending.append(("add", reg))
            if self._thread is None:
                self._start()
            else:
                self._wake()
        return reg

    def remove(self, reg: Registration) -> None:
        """Stop watching ``reg``; its on_cancel runs on the loop thread."""
        with self._lock:
            if reg not in self._live:
                return
            self._live.discard(reg)
            self._pending.append(("remove", reg))
            if not self.on_loop():
                self._wake()  # the loop thread applies it before it selects again

    def modify(self, reg: Registration) -> None:
        """Apply ``reg.events`` to the selector (see Registration.want)."""
        if self.on_loop():
            self._watch(reg)
            return
        with self._lock:
            if reg in self._live:
                self._pending.append(("modify", reg))
                self._wake()

    def call_soon(self, func: Callback) -> None:
        """Run ``func()`` on the loop thread (starting the loop if none runs; it ends again when idle)."""
        with self._lock:
            self._pending.append(("call", func))
            if self._thread is None:
                self._start()
            elif not self.on_loop():
                self._wake()

    def call_later(self, delay: float, func: Callback) -> Timer:
        """Run ``func()`` on the loop thread in ``delay`` seconds. Loop thread only (from a callback).

        Timers do not keep the loop alive: pending ones are dropped when the
        last registration goes (their owners cancel them on close anyway).
        """
        assert self.on_loop(), "call_later() is for the loop thread; use call_soon() from others"
        timer = Timer(time.monotonic() + delay, func)
        heapq.heappush(self._timers, timer)
        return timer

    def on_loop(self) -> bool:
        """True on the loop thread (inside a callback)."""
        return self._thread is threading.current_thread()

    def join_idle(self, timeout: float = _JOIN_TIMEOUT) -> bool:
        """Wait for the loop thread to end if nothing is registered any more; True if no thread is left.

        Called by whoever removed the last registration, so a closed host keeps
        no plugbay thread. A no-op on the loop thread itself.
        """
        with self._lock:
            thread = self._thread if not self._live else None
        if thread is None or thread is threading.current_thread():
            return thread is None or not self._live
        deadline = time.monotonic() + timeout
        while thread.is_alive():  # in slices: a plugin registered meanwhile keeps it running
            with self._lock:
                if self._live or self._thread not in (thread, None):
                    return False
            if time.monotonic() >= deadline:
                return False
            thread.join(0.05)
        return True

    @property
    def running(self) -> bool:
        with self._lock:
            return self._thread is not None

    @property
    def registrations(self) -> int:
        with self._lock:
            return len(self._live)

    # ------------------------------------------------------------- the loop

    def _start(self) -> None:
        """Under the lock: a new selector, wake pipe and thread."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        self._wake_w = wake_w
        thread = threading.Thread(target=self._run, args=(wake_r, wake_w), name=self.name, daemon=True)
        self._thread = thread
        thread.start()

    def _wake(self) -> None:
        if self._wake_w is not None:
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # already full of wake-ups: the loop will look

    def _run(self, wake_r: int, wake_w: int) -> None:
        selector = selectors.DefaultSelector()
        selector.register(wake_r, selectors.EVENT_READ, None)
        self._selector = selector
        self._timers = []
        active: set[Registration] = set()
        try:
            while True:
                if not self._apply(selector, active):
                    return
                for key, fired in selector.select(self._run_timers()):
                    reg = key.data
                    if reg is None:
                        _drain(wake_r)
                    elif reg in active:
                        reg.fired = fired
                        self._ready(selector, active, reg)
        except Exception:  # pragma: no cover - a bug in the loop itself; never leave a silent dead loop
            _log.exception("the shared I/O loop failed; plugins' output and exits are no longer watched")
            for reg in list(active):
                self._drop(selector, active, reg)
        finally:
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None
                    self._wake_w = None
            if self._selector is selector:  # a new loop may have started meanwhile: its state stays
                self._selector = None
                self._timers = []
            selector.close()
            os.close(wake_r)
            os.close(wake_w)

    def _apply(self, selector: selectors.BaseSelector, active: set[Registration]) -> bool:
        """Take the pending adds and removes; False when the loop should end (nothing left)."""
        while True:
            with self._lock:
                pending, self._pending = self._pending, []
                if not pending:
                    if active or self._live:
                        return True
                    self._thread = None  # the next add() starts a fresh loop
                    self._wake_w = None
                    return False
            for op, item in pending:
                if not isinstance(item, Registration):  # "call"
                    self._call(item)
                    continue
                reg = item
                if op == "add":
                    try:
                        if reg.events:
                            selector.register(reg.fd, reg.events, reg)
                            reg.watched = True
                        active.add(reg)
                        reg.added = True
                    except (OSError, ValueError, KeyError) as exc:  # KeyError: an fd already watched
                        _log.debug("cannot watch fd %s: %s", reg.fd, exc)
                        self._finish(reg)
                elif reg not in active:
                    continue
                elif op == "modify":
                    self._watch(reg)
                else:  # "remove"
                    self._drop(selector, active, reg)

    def _watch(self, reg: Registration) -> None:
        """On the loop thread: make the selector watch ``reg.events`` for ``reg``."""
        selector = self._selector
        if selector is None or reg.cancelled or not reg.added:
            return  # not added yet: the add watches reg.events as they are then
        try:
            if reg.events and reg.watched:
                selector.modify(reg.fd, reg.events, reg)
            elif reg.events:
                selector.register(reg.fd, reg.events, reg)
                reg.watched = True
            elif reg.watched:
                reg.watched = False
                selector.unregister(reg.fd)
        except (OSError, ValueError, KeyError) as exc:  # a closed fd: its owner is closing it
            _log.debug("cannot change what fd %s is watched for: %s", reg.fd, exc)

    def _run_timers(self) -> float | None:
        """Run the timers that are due; the seconds until the next one (None: no timer)."""
        timers = self._timers
        while timers:
            first = timers[0]
            if first.cancelled:
                heapq.heappop(timers)
                continue
            wait = first.when - time.monotonic()
            if wait > 0:
                return wait
            heapq.heappop(timers)
            self._call(first.func)
        return None

    def _ready(self, selector: selectors.BaseSelector, active: set[Registration], reg: Registration) -> None:
        try:
            keep = reg.on_ready()
        except Exception:
            _log.exception("a callback of the shared I/O loop failed; fd %s is no longer watched", reg.fd)
            keep = False
        if keep is False:
            with self._lock:
                self._live.discard(reg)
            self._drop(selector, active, reg)

    def _drop(self, selector: selectors.BaseSelector, active: set[Registration], reg: Registration) -> None:
        active.discard(reg)
        if reg.watched:
            reg.watched = False
            try:
                selector.unregister(reg.fd)
            except (KeyError, ValueError, OSError):
                pass
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


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


_SHARED = IOLoop()


def _forget_in_child() -> None:
    """A forked child has no loop thread (nor its parent's plugins): start afresh there."""
    global _SHARED
    _SHARED = IOLoop()


os.register_at_fork(after_in_child=_forget_in_child)


def shared() -> IOLoop:
    """The host process's one loop."""
    return _SHARED
