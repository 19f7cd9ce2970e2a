"""RemoteEnd: what stands in a RemoteClient where a launched plugin's runner would be.

A remote plugin is not started, watched or stopped by the host, so its "runner"
never exits (``wait`` returns None), ``kill`` does nothing, and ``start`` is
refused. It lets Client and Supervisor code that asks the runner keep working.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from plugbay.errors import ClientStateError, ConfigError
from plugbay.runners.base import LaunchSpec, Runner


class RemoteEnd(Runner):
    """The runner of a remote plugin, named by its target."""

    def __init__(self, target: str) -> None:
        self.target = target

    @property
    def id(self) -> str:
        return self.target

    @property
    def name(self) -> str:
        return self.target

    def start(self, spec: LaunchSpec) -> None:
        raise ConfigError(f"a remote plugin ({self.target}) is not started by the host; use RemoteClient")

    def wait(self, timeout: float | None = None) -> int | None:
        return None  # a shared remote plugin does not end with this host's view of it

    def kill(self, grace: float = 2.0) -> None:
        """Nothing to stop: the remote plugin is shared and outlives this host."""

    def stdout_lines(self) -> Iterator[str]:
        return iter(())

    def stderr_lines(self) -> Iterator[str]:
        return iter(())

    def diagnose(self) -> str:
        return f"remote plugin at {self.target}; see the pool's metrics() for each endpoint's state"

    def reattach_data(self) -> dict[str, Any]:
        return {"kind": "RemoteEnd", "id": self.target}


def closed_while_connecting(name: str, target: str) -> ClientStateError:
    """What a RemoteClient's start() raises when close() or kill() from another thread ended it: the remote
    plugin was not touched (a host never stops it), only this client's connecting was given up."""
    return ClientStateError(f"the client of remote plugin {name!r} at {target!r} was closed (close() or kill())"
                            " while it was still connecting (discovering the target's endpoints and asking the"
                            " plugin's Discovery); the remote plugin was left running. Make a new RemoteClient"
                            " (or connect()) to connect again")
