"""The Runner interface: how a plugin is started, watched, stopped and reached.

Mirrors go-plugin's ``runner.Runner``: a Runner starts the plugin and yields its
stdout (which carries the handshake line) and stderr (logs) as line streams; an
AttachedRunner is what remains once a plugin runs, and is all a reattaching
host gets back. Address translation maps what the plugin announces to what the
host can dial (a socket in a bind mount, a published port, a port-forward).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from plugbay.errors import ConfigError


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


class SecureCheck(Protocol):
    """What a runner needs of a SecureConfig (plugbay.SecureConfig) to verify what it starts."""

    @property
    def hash(self) -> str: ...

    @property
    def checksum(self) -> bytes: ...

    def check(self, path: str) -> None: ...


class AttachedRunner(ABC):
    """A plugin that is running: wait for it, stop it, reach it."""

    @property
    def name(self) -> str:
        """A human-friendly name for messages (a Runner says more: the executable, the image)."""
        return self.id or "plugin"

    def has_exited(self) -> bool:
        """Whether the plugin has ended; cheap enough to ask before every call, never blocks."""
        return self.wait(0) is not None

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

    def detach(self) -> None:
        """Free what this host holds for the plugin (watchers, port-forwards, API clients); leave it running."""

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

    def exit_detail(self) -> str:
        """What to add to a "plugin exited before its handshake" error besides its stderr tail."""
        return self.diagnose()

    def check_secure_config(self, secure: SecureCheck) -> None:
        """Verify that what this runner starts is what ``secure`` expects (ChecksumMismatchError if not)."""
        raise ConfigError(f"secure_config is not supported by runner {type(self).__name__};"
                          " drop it or use a runner that can verify what it starts")


ReattachFunc = Callable[[Mapping[str, Any]], AttachedRunner]

# Runner kinds register how to rebuild an AttachedRunner from reattach_data().
_REATTACHERS: dict[str, ReattachFunc] = {}


def register_reattacher(kind: str, func: ReattachFunc) -> None:
    _REATTACHERS[kind] = func


# plugbay's own runner kinds, imported on first reattach so no caller has to import them first.
_BUILT_IN = {"ProcessRunner": "plugbay.runners.process", "DockerRunner": "plugbay.runners.docker.runner",
             "KubernetesRunner": "plugbay.runners.kubernetes.runner"}


def reattach_runner(data: Mapping[str, Any]) -> AttachedRunner:
    kind = str(data.get("kind", ""))
    if kind not in _REATTACHERS and kind in _BUILT_IN:
        import importlib

        importlib.import_module(_BUILT_IN[kind])
    func = _REATTACHERS.get(kind)
    if func is None:
        raise ConfigError(
            f"no runner kind {kind!r} can reattach (known: {sorted({*_REATTACHERS, *_BUILT_IN})});"
            " import the module of the runner that started the plugin before reattaching"
        )
    return func(data)
