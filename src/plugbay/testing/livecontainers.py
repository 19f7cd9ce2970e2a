"""The PluginContainers started and not stopped yet, stopped at interpreter exit.

A reattached Client (what PluginContainer.get_client() makes) only disconnects at interpreter exit (the
plugin was meant to outlive its host), so a PluginContainer started outside a ``with`` block and never
stopped (a module-level one, a script's) left its container running when the interpreter ended, as did
one whose ``with`` block the exit did not unwind. Each started one is stopped here at exit instead, as
go-plugin's CleanupClients kills its Clients. SIGTERM ends a Python process without exit handlers unless
the program makes it an exit (docs/docker.md, PluginContainer): plugbay does not set signal handlers
outside its pytest fixtures.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Any

_log = logging.getLogger("plugbay.testing")
_lock = threading.Lock()
_live: dict[int, Any] = {}  # id -> a started PluginContainer (held: dropped unstopped, its container runs on)


def started(container: Any) -> None:
    with _lock:
        _live[id(container)] = container


def stopped(container: Any) -> None:
    with _lock:
        _live.pop(id(container), None)


def stop_live_containers() -> None:
    """Stop every PluginContainer started and not stopped yet (runs at interpreter exit)."""
    with _lock:
        live = list(_live.values())
    for container in live:
        try:
            container.stop()
        except Exception as exc:  # noqa: BLE001 - one failure must not keep the others running
            _log.warning("stopping PluginContainer %s at exit failed: %s; remove its container with"
                         " `plugbay sweep --docker` once this process has ended", container.image, exc)


def _forget_in_child() -> None:
    """A forked child's exit must not stop its parent's containers (a lock held at the fork stays held there)."""
    global _lock
    _lock = threading.Lock()
    _live.clear()


atexit.register(stop_live_containers)
os.register_at_fork(after_in_child=_forget_in_child)
