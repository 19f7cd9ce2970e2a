"""The Clients whose plugins run: plugins run in their own session, so they would
outlive a host that exits without kill(). cleanup_clients() runs at exit.
"""

from __future__ import annotations

import atexit
import weakref
from typing import Any, Protocol


class _LiveClient(Protocol):
    """What the exit cleanup needs of a Client (typed here so this module imports no Client)."""

    config: Any

    def kill(self) -> None: ...

    def close(self) -> None: ...


# Started, not yet killed.
LIVE: weakref.WeakSet[_LiveClient] = weakref.WeakSet()


def cleanup_clients() -> None:
    """Kill every started Client (go-plugin's CleanupClients); runs at interpreter exit too.

    Reattached clients only disconnect: their plugin was meant to outlive a host.
    """
    for client in list(LIVE):
        if client.config.reattach is None:
            client.kill()
        else:
            client.close()


atexit.register(cleanup_clients)
