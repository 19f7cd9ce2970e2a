"""ClientConfig's checks: a wrong value is a ConfigError saying what to pass, before any plugin starts.

Without them most mistakes surfaced late (often after the plugin was launched) as an
AttributeError or TypeError from deep inside, or not at all (a str logger broke every
log line; a dict of gRPC options failed in grpcio's Cython).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from plugbay.core.broker.plugin import check_plugin_fields
from plugbay.core.host.deadline import NO_DEADLINE
from plugbay.core.protocol.checks import check_grpc_options, check_logger, finite_float, kind as _kind
from plugbay.core.protocol.handshake import is_tcp_port
from plugbay.core.transport.keepalive import Keepalive
from plugbay.errors import ConfigError, printable


def check_client_config(config: Any) -> None:
    """Raise ConfigError naming the first field of ``config`` (a ClientConfig, which calls this) that
    cannot work."""
    from plugbay.core.host.reattach import ReattachConfig
    from plugbay.core.host.secure import SecureConfig
    from plugbay.runners.base import AttachedRunner, Runner
    from plugbay.runners.process import check_cmd, check_env

    check_plugin_fields("ClientConfig", config.handshake, config.plugins, config.versioned_plugins,
                        "pass HandshakeConfig(protocol_version, magic_cookie_key, magic_cookie_value)")
    if isinstance(config.runner, AttachedRunner) and not isinstance(config.runner, Runner):
        # a running plugin (reattach_runner(), AttachedProcess): runner= starts one, and a failed start ends its runner
        raise ConfigError(f"ClientConfig.runner= takes a Runner that starts a plugin; {type(config.runner).__name__} is"
                          " a running plugin's: to use that plugin, pass reattach=ReattachConfig(...) (another"
                          " Client's reattach_config(), or ReattachConfig.from_json(text)) instead of runner=")
    if config.runner is not None and not isinstance(config.runner, Runner):
        raise ConfigError(f"ClientConfig.runner must be a Runner (ProcessRunner, DockerRunner, KubernetesRunner),"
                          f" got {_kind(config.runner)}")
    if config.cmd is not None:
        check_cmd(config.cmd, "ClientConfig.cmd")
    if config.reattach is not None:
        if not isinstance(config.reattach, ReattachConfig):
            raise ConfigError(f"ClientConfig.reattach must be a ReattachConfig, got {_kind(config.reattach)};"
                              " pass ReattachConfig.from_json(text)")
        if config.reattach.handshake.multiplex:
            raise ConfigError("this reattach config is of a plugin with a multiplexed broker (its host set"
                              " multiplex_broker=True), which cannot be reattached (as in go-plugin); start"
                              " the plugin without multiplex_broker to reattach to it")
    for name in ("auto_mtls", "require_tls"):
        if getattr(config, name) is not None and not isinstance(getattr(config, name), bool):
            raise ConfigError(f"ClientConfig.{name} must be True, False or None, got {getattr(config, name)!r}")
    for name in ("multiplex_broker", "skip_host_env", "trust_announced_address"):
        if not isinstance(getattr(config, name), bool):
            raise ConfigError(f"ClientConfig.{name} must be True or False, got {getattr(config, name)!r}")
    _seconds(config.start_timeout, "start_timeout", zero=False)
    if config.call_timeout is not None:
        _seconds(config.call_timeout, "call_timeout (None: no deadline)", zero=False)
    _seconds(config.kill_grace, "kill_grace", zero=True)
    for name in ("min_port", "max_port"):
        port = getattr(config, name)
        if not is_tcp_port(port):
            raise ConfigError(f"ClientConfig.{name} must be a port number (1-65535), got {port!r}")
    if config.min_port > config.max_port:
        raise ConfigError(f"min_port {config.min_port} is above max_port {config.max_port}")
    # as the config is made, as every other field: Client() alone caught it, so a config handed on (to a
    # Supervisor, a factory) carried a keepalive no Client could take
    Keepalive.of(config.mux_keepalive, "ClientConfig.mux_keepalive")
    secure = config.secure_config
    if secure is not None and not isinstance(secure, SecureConfig) and not (
            isinstance(secure, Sequence) and not isinstance(secure, (str, bytes)) and secure
            and all(isinstance(s, SecureConfig) for s in secure)):
        raise ConfigError(f"ClientConfig.secure_config must be a SecureConfig (or a list of them), got {_kind(secure)};"
                          " pass SecureConfig.of_file(path) or SecureConfig(checksum, 'sha256')")
    check_logger(config.logger, "ClientConfig.logger")
    for name in ("stdout_sink", "stderr_sink", "raw_log_sink"):
        if getattr(config, name) is not None and not callable(getattr(config, name)):
            raise ConfigError(f"ClientConfig.{name} must be a callable, got {_kind(getattr(config, name))}")
    check_env(config.env, "ClientConfig.env")
    if config.name is not None and (not isinstance(config.name, str) or not config.name):
        raise ConfigError(f"ClientConfig.name must be a non-empty str or None, got {config.name!r}")
    if config.name is not None and printable(config.name) != config.name:  # it names the plugin in log lines
        raise ConfigError(f"ClientConfig.name must be a plugin name without control or bidi formatting characters"
                          f" (newlines, escapes, bidi overrides), got {config.name!r:.120}; pick a printable name")
    check_grpc_options(config.grpc_options, "ClientConfig.grpc_options")
    group = config.unix_socket_group
    if group is not None and (isinstance(group, bool) or not isinstance(group, (str, int))):
        raise ConfigError(f"ClientConfig.unix_socket_group must be a group name or gid, got {group!r}")
    folder = config.unix_socket_temp_dir
    if folder is not None and not isinstance(folder, (str, os.PathLike)):
        raise ConfigError(f"ClientConfig.unix_socket_temp_dir must be a folder path, got {_kind(folder)}")
    if folder is not None:
        try:
            named = os.fsencode(folder)
        except (TypeError, UnicodeError) as exc:  # a lone surrogate, a __fspath__ that returns no path
            raise ConfigError(f"ClientConfig.unix_socket_temp_dir {folder!r} is no folder path ({exc});"
                              " pass one this system can name") from None
        if b"\0" in named:
            raise ConfigError(f"ClientConfig.unix_socket_temp_dir holds a NUL byte, which no folder path can:"
                              f" {folder!r}; remove it")


def _seconds(value: Any, name: str, zero: bool) -> None:
    # int or float only: the waits that take these (Event.wait, settimeout, "%.1f") refuse a Fraction;
    # at most NO_DEADLINE: grpcio's deadline and threading's waits overflow on much longer ones
    seconds = finite_float(value, types=(int, float))
    if seconds is None or not (seconds >= 0 if zero else seconds > 0) or seconds > NO_DEADLINE:
        raise ConfigError(f"ClientConfig.{name} must be a number of seconds {'>= 0' if zero else '> 0'}"
                          f" (at most {NO_DEADLINE:.0f}, about 31 years), got {value!r}")
