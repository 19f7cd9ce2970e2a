"""Closing a network front's ended host sessions off its accept loop (plugbay.core.plugin.netmux).

A session may take seconds to stop (the gateway's child gets a grace to exit
after SIGTERM). Closed on the accept loop, one after another, ten such sessions
held up every new host's session and every other host's keepalive check for
twenty seconds. Here they are closed on a few threads of their own, started
only while sessions wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Protocol

log = logging.getLogger("plugbay.server")

CLOSERS = 4  # threads closing ended sessions at once while the front runs
SHUTDOWN_CLOSERS = 32  # ... when the front closes: every session at once, within reason


class Closable(Protocol):
    def close(self) -> None: ...


def _close_session(session: Closable) -> None:
    try:
        session.close()
    except Exception:
        log.exception("stopping a host session failed")


class SessionCloser:
    """Closes ended sessions on at most ``workers`` threads of its own, started while sessions wait.

    A session being closed still holds what it is freeing (the gateway's: a child process), so the
    front counts ``pending`` against MAX_SESSIONS until its close returns.
    """

    def __init__(self, workers: int = CLOSERS) -> None:
        self._workers = workers
        self._lock = threading.Lock()
        self._queue: deque[Closable] = deque()
        self._threads: set[threading.Thread] = set()
        self._pending = 0

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def close_later(self, sessions: Sequence[Closable]) -> None:
        """Queue ``sessions`` to be closed; never waits for a close (unless no thread can be had)."""
        with self._lock:
            self._queue.extend(sessions)
            self._pending += len(sessions)
            wanted = min(self._workers - len(self._threads), len(self._queue))
            started = [threading.Thread(target=self._run, name="plugbay-netmux-close", daemon=True)
                       for _ in range(max(0, wanted))]
            self._threads.update(started)
        for thread in started:
            try:
                thread.start()
            except RuntimeError:  # no thread to be had: what this one would have closed is closed here
                with self._lock:
                    self._threads.discard(thread)
                self._run(inline=True)

    def _run(self, inline: bool = False) -> None:
        try:
            while True:
                with self._lock:
                    if not self._queue:  # gone from _threads under the lock that queues: none is stranded
                        if not inline:
                            self._threads.discard(threading.current_thread())
                        return
                    session = self._queue.popleft()
                try:
                    _close_session(session)
                finally:
                    with self._lock:
                        self._pending -= 1
        except BaseException:  # (SystemExit in a close): not counted a worker any more; drain() starts others
            if not inline:
                with self._lock:
                    self._threads.discard(threading.current_thread())
            raise

    def drain(self, workers: int = SHUTDOWN_CLOSERS) -> None:
        """Close everything queued, on up to ``workers`` threads at once, and wait for every close."""
        with self._lock:
            self._workers = max(self._workers, workers)
        self.close_later([])  # more threads for what waits
        while True:
            with self._lock:
                threads = [t for t in self._threads if t is not threading.current_thread()]
            if not threads:
                return
            for thread in threads:
                if thread.ident is None:  # being started by a close_later() on another thread
                    time.sleep(0.01)
                    break
                thread.join()
