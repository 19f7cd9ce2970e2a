"""RemoteEnd: what stands in a RemoteClient where a launched plugin's runner would be.

A remote plugin is not started, watched or stopped by the host, so its "runner"
never exits (``wait`` returns None), ``kill`` does nothing, and ``start`` is
refused. It lets Client and Supervisor code that asks the runner keep working.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

from plugbay.core.host.callerrors import ClientClosed
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


def closed_while_connecting(name: str, target: str, kind: str, *, found: bool, discovered: bool) -> ClientStateError:
    """What a RemoteClient's start() (``kind``: the class the user made, RemoteClient or AsyncRemoteClient)
    raises when close() or kill() from another thread ended it: only this client's connecting was given up.
    ``found``: an endpoint of the plugin had answered (the plugin runs, and a host never stops it);
    ``discovered``: discovery and Discovery were done (an AsyncRemoteClient then sets up its asyncio channel)."""
    doing = "after discovery, as it set up its asyncio channel" if discovered else \
        "discovering the target's endpoints and asking the plugin's Discovery"
    plugin = "the remote plugin was left running" if found else \
        "no endpoint of the plugin had been found or had answered yet"
    return ClientStateError(f"the client of remote plugin {name!r} at {target!r} was closed (close() or kill())"
                            f" while it was still connecting ({doing}); {plugin}. Make a new {kind} to connect"
                            " again")


def closed_remote(name: str, kind: str) -> ClientStateError:
    """What a closed (or killed) RemoteClient's start() and dispense() say."""
    return ClientStateError(f"the client of remote plugin {name!r} was closed (close() or kill()); make a new"
                            f" {kind} to connect again")


def remote_call_closed(name: str, kind: str, original: grpc.RpcError | None) -> ClientClosed:
    """A call a RemoteClient's close() or kill() ended (``original``: its failure) or refused (None: never sent,
    also a call still waiting for an endpoint when the close came)."""
    if original is None:
        return ClientClosed(f"the client of remote plugin {name!r} was closed (close() or kill()); the call was not"
                            f" sent: the plugin did not get the call. Make a new {kind} to call it again", None,
                            grpc.StatusCode.CANCELLED, sent=False)
    return ClientClosed(f"the client of remote plugin {name!r} was closed (close() or kill()) while the call was in"
                        f" flight; the plugin may have run the call. Make a new {kind} to call it again", original,
                        grpc.StatusCode.CANCELLED)
