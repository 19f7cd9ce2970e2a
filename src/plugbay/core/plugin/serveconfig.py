"""What serve() serves: ServeConfig (go-plugin's ServeConfig) and protocol_version(), which of its
plugin sets a host gets (plugbay.core.plugin.server serves them)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from plugbay.core.broker.plugin import PluginSet, VersionedPlugins, check_plugin_fields
from plugbay.core.plugin.slotwait import DEFAULT_MAX_WORKERS, NETWORK_MAX_WORKERS
from plugbay.core.plugin.netconfig import NetworkServe
from plugbay.core.plugin.stdio import DEFAULT_BUFFER_BYTES
from plugbay.core.plugin.goenv import go_quote, host_versions
from plugbay.core.protocol.checks import check_grpc_options, check_logger, kind
from plugbay.core.protocol.handshake import ENV_PROTOCOL_VERSIONS, HandshakeConfig
from plugbay.core.protocol.records import Record
from plugbay.errors import ConfigError


class ServeConfig(Record):
    """What serve() serves (go-plugin's ServeConfig)."""

    _fields = ("handshake", "plugins", "versioned_plugins", "grpc_server_options", "logger",
               "stdio_buffer_bytes", "max_workers", "network")

    def __init__(self, handshake: HandshakeConfig, plugins: PluginSet | None = None,
                 versioned_plugins: VersionedPlugins | None = None,
                 grpc_server_options: Sequence[tuple[str, Any]] = (), logger: logging.Logger | None = None,
                 stdio_buffer_bytes: int = DEFAULT_BUFFER_BYTES, max_workers: int | None = None,
                 network: NetworkServe | None = None) -> None:
        self.handshake = handshake
        self.plugins = plugins
        self.versioned_plugins = versioned_plugins
        self.grpc_server_options = grpc_server_options
        self.logger = logger
        self.stdio_buffer_bytes = stdio_buffer_bytes  # captured output kept for the host, at most
        # The plugin's own handlers that may run at once (each holds a thread); more wait (locally) or are
        # refused with RESOURCE_EXHAUSTED. Health and Shutdown have threads of their own (core.plugin.gate).
        # None: DEFAULT_MAX_WORKERS, or NETWORK_MAX_WORKERS on the network (see handler_limit()).
        self.max_workers = max_workers
        self.network = network  # serve on the network over provided mTLS (plugin/network.py)
        self.check()

    def handler_limit(self) -> int:
        """max_workers, or its default for this mode: on the network a server shared by many hosts (and each
        brokering session's pool) keeps the lower one; calls there are refused at once, not waiting."""
        if self.max_workers is not None:
            return self.max_workers
        return DEFAULT_MAX_WORKERS if self.network is None else NETWORK_MAX_WORKERS

    def check(self) -> None:
        """ConfigError naming the first field that cannot work (serve() checks again: fields may change)."""
        check_plugin_fields("ServeConfig", self.handshake, self.plugins, self.versioned_plugins,
                            "pass the HandshakeConfig the plugin's hosts use")
        check_grpc_options(self.grpc_server_options, "ServeConfig.grpc_server_options")
        check_logger(self.logger, "ServeConfig.logger")
        workers = self.max_workers
        if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
            raise ConfigError(f"ServeConfig.max_workers must be a positive int (the plugin's handlers that may run"
                              f" at once), got {workers!r:.80}; fix the plugin's ServeConfig")
        size = self.stdio_buffer_bytes
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ConfigError(f"ServeConfig.stdio_buffer_bytes must be a whole number of bytes, 0 or more (the"
                              f" output kept until the host reads it), got {size!r:.80}; fix the plugin's"
                              " ServeConfig")
        if self.network is not None and not isinstance(self.network, NetworkServe):
            raise ConfigError(f"ServeConfig.network must be a NetworkServe or None, got {kind(self.network)};"
                              " pass NetworkServe(listen=..., cert_file=..., key_file=..., client_ca_file=...)")


def protocol_version(config: ServeConfig, env: Mapping[str, str]) -> tuple[int, PluginSet]:
    """go-plugin's protocolVersion(): the highest version both sides know.

    ``plugins`` counts as the set for ``handshake.protocol_version``. With no
    common version the *lowest* one is returned, so that the host, which has
    both lists, reports the mismatch (as go-plugin does).
    """
    versions, bad = host_versions(env.get(ENV_PROTOCOL_VERSIONS, ""))
    for piece in bad:  # go-plugin's words and quoting, then skipped; its missing newline glued the
        # message to the next stderr line (a host's first hclog record then failed to parse)
        sys.stderr.write(f"server sent invalid plugin version {go_quote(piece)}\n")
    host_set = set(versions)
    sets: dict[int, PluginSet] = dict(config.versioned_plugins or {})
    if config.plugins is not None:
        sets[config.handshake.protocol_version] = config.plugins
    if not sets:
        return config.handshake.protocol_version, {}
    if config.network is not None and not host_set:
        return max(sets), sets[max(sets)]  # no host told us its versions: offer the newest
    for version in sorted(sets, reverse=True):
        if version in host_set:
            return version, sets[version]
    lowest = min(sets)
    return lowest, sets[lowest]
