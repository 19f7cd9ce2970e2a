"""The Clients whose plugins run: plugins run in their own process group, so they would
outlive a host that exits without kill(). cleanup_clients() runs at exit.

It also tracks the short-lived threads that finish a kill() or close() asked from
the shared loop thread (a logging handler, a ``raw_log_sink``): that shutdown
waits for things the loop itself must service (the plugin's pipes, its exit, a
TLS relay), so it cannot run there. cleanup_clients() waits for them too.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from plugbay.core.transport import aioloop

_STOP_JOIN = 30.0  # a kill is bounded (kill_grace + reaping + joins); this bounds the exit wait too


class _LiveClient(Protocol):
    """What the exit cleanup needs of a Client (typed here so this module imports no Client)."""

    config: Any

    def kill(self) -> None: ...

    def close(self) -> None: ...


class _Restarter(Protocol):
    """What the exit cleanup needs of something that restarts plugins (a Supervisor)."""

    def halt(self) -> None: ...


# Started, not yet killed.
LIVE: weakref.WeakSet[_LiveClient] = weakref.WeakSet()
# Started Supervisors, not yet stopped: halted before the Clients are killed, or one would start
# the plugin the cleanup just killed again, and nothing would end that one.
RESTARTERS: weakref.WeakSet[_Restarter] = weakref.WeakSet()
_STOPPING: set[threading.Thread] = set()
_stopping_lock = threading.Lock()


def stop_elsewhere(name: str, stop: Callable[[], None]) -> threading.Thread:
    """Run ``stop()`` on a new thread called ``name`` (tracked until it ends; see join_stopping)."""

    def run() -> None:
        try:
            stop()
        finally:
            with _stopping_lock:
                _STOPPING.discard(threading.current_thread())

    thread = threading.Thread(target=run, name=name, daemon=True)
    with _stopping_lock:
        _STOPPING.add(thread)
    thread.start()
    return thread


def join_stopping(timeout: float = _STOP_JOIN) -> bool:
    """Wait for every stop_elsewhere() thread (but the caller's own); True if none is left."""
    deadline = time.monotonic() + timeout
    with _stopping_lock:
        threads = [t for t in _STOPPING if t is not threading.current_thread()]
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.0))
    return not any(t.is_alive() for t in threads)


class LoopHandoff:
    """A Client's kill() or close() asked on the shared loop thread, done on a thread of its own.

    The shutdown waits for the plugin's pipes, its exit, the broker stream and
    the TLS relay, which the loop services: run there it would stall every
    plugin's I/O for up to its timeouts (and, waiting for the Client's lock
    held by a start() that waits on the loop for the handshake line, until
    start_timeout). The thread is tracked: cleanup_clients() waits for it, and
    so does the Client's next kill()/close() (:meth:`join`).
    """

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self, name: str, stop: Callable[[], None], done: bool) -> bool:
        """On the loop thread: run ``stop`` on a thread ``name`` (once, unless ``done``); True there.

        False off the loop thread: the caller stops in place.
        """
        if not aioloop.shared().on_loop():
            return False
        with self._lock:
            if self.thread is None and not done:
                self.thread = stop_elsewhere(name, stop)
        return True

    def join(self, timeout: float = _STOP_JOIN) -> None:
        """Wait for the handed-off stop (not from that thread itself)."""
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


_STARTS_JOIN = 2.0


def cleanup_clients() -> None:
    """Kill every started or starting Client (go-plugin's CleanupClients); runs at interpreter exit too.

    Reattached clients only disconnect: their plugin was meant to outlive a host.
    A kill() asked from a loop callback and still running elsewhere is waited for
    (not when this itself runs on the loop thread: it then only starts the kills).
    Supervisors stop restarting first; their Clients then end as every other one.
    """
    for restarter in list(RESTARTERS):
        restarter.halt()
    clients = list(LIVE)
    # threads still starting a Client: ended here, they raise; given a moment to finish doing so,
    # as at interpreter exit a daemon thread still writing its traceback aborts the interpreter
    starting = [t for t in (getattr(c, "_starting", None) for c in clients)
                if isinstance(t, threading.Thread) and t is not threading.current_thread()]
    for client in clients:
        if client.config.reattach is None:
            client.kill()
        else:
            client.close()
    deadline = time.monotonic() + _STARTS_JOIN
    for thread in starting:
        thread.join(max(deadline - time.monotonic(), 0.0))
    if not aioloop.shared().on_loop():
        join_stopping()


atexit.register(cleanup_clients)


def _forget_in_child() -> None:
    """A forked child holds none of its parent's plugins: its exit (cleanup_clients) must not end them.

    Its copies of the parent's Clients, Supervisors and stop threads are forgotten (the threads do
    not exist there; a lock another thread held at the fork would never be released there).
    A Client kept by the child's own code knows itself foreign there (Client.kill()).
    """
    global _stopping_lock
    _stopping_lock = threading.Lock()
    LIVE.clear()  # in place: client.py, the Supervisor and the gateway hold these very sets
    RESTARTERS.clear()
    _STOPPING.clear()


os.register_at_fork(after_in_child=_forget_in_child)
