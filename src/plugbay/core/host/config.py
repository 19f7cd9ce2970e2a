"""ClientConfig: how a Client starts (or reattaches to) one plugin. See plugbay.core.host.client."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from plugbay.core.protocol.handshake import HandshakeConfig
from plugbay.core.broker.plugin import PluginSet, VersionedPlugins
from plugbay.core.host.reattach import ReattachConfig
from plugbay.core.host.secure import SecureConfig
from plugbay.core.host.stdio import Sink
from plugbay.core.transport.keepalive import DEFAULT as DEFAULT_KEEPALIVE
from plugbay.errors import ConfigError
from plugbay.runners.base import AttachedRunner, Runner


@dataclass
class ClientConfig:
    """How to start (or reattach to) one plugin. See the module docstring."""

    handshake: HandshakeConfig
    plugins: PluginSet | None = None
    versioned_plugins: VersionedPlugins | None = None
    runner: Runner | None = None
    cmd: Sequence[str | os.PathLike[str]] | None = None  # check() makes it a list of str
    reattach: ReattachConfig | None = None
    # AutoMTLS; None: on when the runner's transport is not private (Docker tcp, pods)
    auto_mtls: bool | None = None
    # Refuse a plugin that announces no certificate (TLSRequiredError) instead of plaintext;
    # None: required when AutoMTLS is on and the runner's transport is not private.
    require_tls: bool | None = None
    start_timeout: float = 60.0
    call_timeout: float | None = 30.0
    kill_grace: float = 2.0
    min_port: int = 10000
    max_port: int = 25000
    multiplex_broker: bool = False
    # multiplex_broker's one connection: pinged after this many seconds without a frame, and dropped
    # (the next call dials again) when nothing answers within the second figure; go's yamux: 30, 10.
    # An optional third figure: dropped too when no byte could be written to it for that long (go's
    # ConnectionWriteTimeout; 10 s when not given, math.inf: never)
    mux_keepalive: tuple[float, ...] = DEFAULT_KEEPALIVE
    secure_config: SecureConfig | Sequence[SecureConfig] | None = None
    logger: logging.Logger | None = None
    stdout_sink: Sink | None = None
    stderr_sink: Sink | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    skip_host_env: bool = False  # with cmd: start the plugin without the host's environment
    name: str | None = None  # logger and message name; default: the runner's name
    grpc_options: Sequence[tuple[str, Any]] = ()
    raw_log_sink: Callable[[str], None] | None = None  # non-hclog stderr lines, else logged
    # go-plugin's UnixSocketConfig: the group that may use the plugin's socket
    # (PLUGIN_UNIX_SOCKET_GROUP; the private dir becomes 0770 for it) and its parent dir.
    unix_socket_group: str | int | None = None
    unix_socket_temp_dir: str | None = None
    # Dial the address a started plugin announces without proving that the process plugbay started (or one
    # of its descendants) listens there (runners.ownsocket): only for a command that hands the serving to a
    # process it does not start (a `docker run` wrapper, a service manager). Reattach proves its address always.
    trust_announced_address: bool = False

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """ConfigError naming the first field that cannot work (Client() checks again: fields may change)."""
        from plugbay.core.host.configcheck import check_client_config
        from plugbay.runners.process import command_kept

        check_client_config(self)  # first: it names the first field that cannot work (cmd's check among them)
        if self.cmd is not None:  # as text, so repr, == and the runner see what the exec gets
            self.cmd = command_kept(self.cmd, "ClientConfig.cmd")

    def tls_policy(self, runner: AttachedRunner, has_cert: bool | None = None) -> tuple[bool, bool]:
        """(use AutoMTLS, require TLS) for ``runner``; ``has_cert``: a reattach's stored cert."""
        private = runner.private_transport
        auto = has_cert if has_cert is not None else (
            self.auto_mtls if self.auto_mtls is not None else not private)
        require = self.require_tls if self.require_tls is not None else (auto and not private)
        if require and not auto:
            raise ConfigError("require_tls=True needs AutoMTLS: set auto_mtls=True (or leave it None"
                              " for a runner whose transport is not private)")
        return auto, require

    def versions(self) -> dict[int, PluginSet]:
        return accepted_versions(self.handshake, self.plugins, self.versioned_plugins)


def accepted_versions(handshake: HandshakeConfig, plugins: PluginSet | None,
                      versioned_plugins: VersionedPlugins | None) -> dict[int, PluginSet]:
    """The plugin sets a host takes, by protocol version: versioned_plugins, and plugins under the handshake's
    version (that version alone, with no plugins at all). What a Client negotiates, and what a check before it
    (PluginContainer.start()) must take, or the two disagree."""
    out: dict[int, PluginSet] = {int(v): dict(p) for v, p in (versioned_plugins or {}).items()}
    if plugins is not None:
        out.setdefault(handshake.protocol_version, dict(plugins))
    if not out:
        out[handshake.protocol_version] = {}
    return out
