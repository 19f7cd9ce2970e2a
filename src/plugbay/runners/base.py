"""The Runner interface: how a plugin is started, watched, stopped and reached.

Mirrors go-plugin's ``runner.Runner``: a Runner starts the plugin and yields its
stdout (which carries the handshake line) and stderr (logs) as line streams; an
AttachedRunner is what remains once a plugin runs, and is all a reattaching
host gets back. Address translation maps what the plugin announces to what the
host can dial (a socket in a bind mount, a published port, a port-forward).
"""

from __future__ import annotations

import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LaunchSpec:
    """What the Client hands a Runner: the go-plugin environment and a host folder.

    ``env`` holds the handshake variables (cookie, versions, ports, client cert).
    ``socket_dir`` is a private host folder for unix sockets; a runner that puts
    the plugin elsewhere (a container) mounts it and rewrites
    PLUGIN_UNIX_SOCKET_DIR, then maps paths back in plugin_to_host().
    """

    env: Mapping[str, str]
    socket_dir: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


class AttachedRunner(ABC):
    """A plugin that is running: wait for it, stop it, reach it."""

    @property
    @abstractmethod
    def id(self) -> str:
        """A unique id of the running plugin: pid, container id, namespace/pod."""

    @abstractmethod
    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the plugin ends and return its exit code (None on timeout)."""

    @abstractmethod
    def kill(self, grace: float = 2.0) -> None:
        """Stop the plugin (after ``grace`` seconds, by force) and free what it held. Idempotent."""

    def plugin_to_host(self, network: str, address: str) -> tuple[str, str]:
        """Map an address the plugin announced to one the host can dial."""
        return network, address

    def host_to_plugin(self, network: str, address: str) -> tuple[str, str]:
        """Map a host address to one the plugin can dial (brokered callbacks)."""
        return network, address

    @property
    def private_transport(self) -> bool:
        """Whether the host reaches the plugin only through its private folder (a unix socket).

        False (the safe default) when the connection leaves it: a TCP port, a
        container bridge, a pod network. Then AutoMTLS is on unless the
        ClientConfig turns it off, and a plugin that announces no certificate
        is refused (TLSRequiredError) instead of used in plaintext.
        """
        return False

    def reattach_data(self) -> dict[str, Any]:
        """JSON-serialisable facts that let another host process attach again."""
        return {"kind": type(self).__name__, "id": self.id}


class Runner(AttachedRunner):
    """A plugin to be started. One Runner runs one plugin once."""

    @property
    @abstractmethod
    def name(self) -> str:
        """A human-friendly name: the executable, the image."""

    @abstractmethod
    def start(self, spec: LaunchSpec) -> None:
        """Start the plugin; return once its output streams can be read."""

    @abstractmethod
    def stdout_lines(self) -> Iterator[str]:
        """The plugin's stdout, line by line, ending when the plugin ends or is killed."""

    @abstractmethod
    def stderr_lines(self) -> Iterator[str]:
        """The plugin's stderr, line by line, ending when the plugin ends or is killed."""

    @abstractmethod
    def diagnose(self) -> str:
        """Best-effort facts on why the plugin failed: state, exit code, last log lines."""


ReattachFunc = Callable[[Mapping[str, Any]], AttachedRunner]

# Runner kinds register how to rebuild an AttachedRunner from reattach_data().
_REATTACHERS: dict[str, ReattachFunc] = {}


def register_reattacher(kind: str, func: ReattachFunc) -> None:
    _REATTACHERS[kind] = func


def reattach_runner(data: Mapping[str, Any]) -> AttachedRunner:
    from plugbay.errors import ConfigError

    kind = str(data.get("kind", ""))
    func = _REATTACHERS.get(kind)
    if func is None:
        raise ConfigError(
            f"no runner kind {kind!r} can reattach (known: {sorted(_REATTACHERS)});"
            " import the module of the runner that started the plugin before reattaching"
        )
    return func(data)


# Identifies this host process on everything it starts (container labels, pod
# labels), so a sweep can tell plugins whose host is gone from live ones.
HOST_SESSION_ID = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
