"""How serve() learns it must stop: from a signal handler or another thread, without a lock.

A Python signal handler runs on the main thread between any two bytecodes,
possibly while that thread is inside a lock's critical section. serve() used
to wake its waiting main thread with a ``threading.Event``; an ``Event.set()``
in the SIGTERM handler that landed while the main thread was itself inside
``Event.wait()`` (holding the Event's lock for a few bytecodes every 0.5 s, and
longer when another thread had the GIL just then) waited for that lock forever:
the plugin never exited. Here the handler only sets a flag and sends a byte on
a non-blocking socket pair; the main thread sleeps in ``select()`` on the other
end, which a signal interrupts and which returns at once once the byte is there.
"""

from __future__ import annotations

import select
import socket
import threading

_BACKSTOP = 0.5  # wait()'s select timeout: only a backstop, every stop sends a byte


class StopLatch:
    """Set once by :meth:`ask` (signal handlers) or :meth:`stop` (threads); :meth:`wait` returns then."""

    def __init__(self) -> None:
        self.asked = False
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self._lock = threading.Lock()  # stop() from other threads against close(); never in a handler

    def wake(self) -> None:
        """Wake :meth:`wait` without asking to stop (a handler that only left a note). Lock-free."""
        try:
            self._w.send(b"\0")
        except OSError:  # full (wait() drains it: already woken) or closed (stopped already)
            pass

    def ask(self) -> None:
        """Ask to stop from a signal handler on the main thread: no lock taken."""
        self.asked = True
        self.wake()

    def stop(self) -> None:
        """Ask to stop from any thread (a GRPCController.Shutdown handler)."""
        self.asked = True
        with self._lock:
            self.wake()

    def wait_once(self) -> bool:
        """Sleep until woken (or the backstop timeout); True once a stop was asked."""
        select.select([self._r], [], [], _BACKSTOP)
        try:
            while self._r.recv(4096):
                pass
        except OSError:  # drained
            pass
        return self.asked

    def close(self) -> None:
        with self._lock:
            self._w.close()  # a late wake() gets OSError on the closed object, never another fd
        self._r.close()
