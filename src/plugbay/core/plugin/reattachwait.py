"""What a process plugin does when its host dies: stop, or wait a bounded time for a later host to reattach.

The host's end of the plugin's stderr pipe closes when the host dies (the stdio pump sees it: stdio.py's
watch_host). A plugin its host asked to outlive it (core/protocol/outlive.py) used to serve on for good, for a
reattach that might never come: a host killed outright with no later one left it running, which nothing
stopped. It now waits PLUGBAY_OUTLIVE_GRACE seconds for a call of any kind (a reattaching host's first is
its health check) and stops as on SIGTERM when none came; once one came it serves on as before.

The call is seen at grpcio's hand-over to the server's pool (DaemonPool.note_next_submit), for health,
the controller, stdio and broker streams and the plugin's services alike, armed only once the host died:
no call pays for it while a host is alive (nor after the first call). The wait runs on the pump's thread,
at each of its polls: no thread of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from plugbay.core.plugin.logs import PluginLogging
from plugbay.core.plugin.setupfail import outlives_host
from plugbay.core.plugin.stdio import StdioCapture
from plugbay.core.protocol.outlive import ENV_OUTLIVE_GRACE, read_grace
from plugbay.core.transport.workers import DaemonPool


class ReattachWait:
    """Once told the host died, ``stop`` after ``grace`` seconds unless ``pool`` got a call by then."""

    def __init__(self, grace: float, pool: DaemonPool, stop: Callable[[], None]) -> None:
        self._grace = grace
        self._pool = pool
        self._stop = stop
        self._until: float | None = None
        self._called = False  # set on a pool thread, read on the pump's: a plain bool needs no lock
        self._over = False

    def host_gone(self) -> None:
        """On the pump's thread, once."""
        self._until = time.monotonic() + self._grace
        self._pool.note_next_submit(self._call_came)

    def _call_came(self) -> None:
        self._called = True

    def poll(self) -> None:
        """On the pump's thread, at each of its polls once the host died."""
        if self._over or self._until is None:
            return
        if self._called:  # a host reattached: serve on, as a plugin asked to outlive its host always did
            self._over = True
        elif time.monotonic() >= self._until:
            self._over = True
            self._stop()  # as on SIGTERM; said nowhere: the stderr our log records went to is gone


def watch_host(env: Mapping[str, str], capture: StdioCapture, logs: PluginLogging, pool: DaemonPool,
               gone: Callable[[], None], stop: Callable[[], None]) -> str:
    """Before the capture starts: ``gone`` when the host dies, or, when the host asked the plugin to outlive it,
    ``stop`` once a grace passed with no call. Returns what was wrong with PLUGBAY_OUTLIVE_GRACE ("": nothing),
    for a log line while the host still reads them."""
    if not outlives_host(env):
        capture.watch_host(gone)
        logs.stop_when_host_gone(gone)
        return ""
    grace, problem = read_grace(env.get(ENV_OUTLIVE_GRACE))
    if grace is not None:
        wait = ReattachWait(grace, pool, stop)
        capture.watch_host(wait.host_gone, wait.poll)
    return problem
