"""PluginContainer's own arguments and its ``client_options``, checked when it is made, before anything is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from plugbay.core.broker.plugin import check_plugin_set, check_versioned_plugins
from plugbay.core.host.client import ClientConfig
from plugbay.core.protocol.handshake import HandshakeConfig, is_tcp_port
from plugbay.errors import ConfigError
from plugbay.runners.options import required_str, seconds

_MAX_WAIT = 365 * 86400.0  # a year: longer is a mistake, and past time_t a socket timeout is an OverflowError
# ClientConfig fields a reattaching Client uses; the others PluginContainer sets itself or mean nothing to a
# reattach (what starts a plugin: env, ports, socket group); multiplex_broker: see _NO_MULTIPLEX
_CLIENT_OPTIONS = ("require_tls", "kill_grace", "logger", "stdout_sink", "stderr_sink", "name", "grpc_options",
                   "raw_log_sink", "unix_socket_temp_dir")
_OWN_CLIENT_OPTIONS = ("handshake", "plugins", "versioned_plugins", "start_timeout", "call_timeout", "auto_mtls")
_NO_MULTIPLEX = ("PluginContainer's Client reaches the container by reattaching, and a plugin with a multiplexed"
                 " broker takes one host connection (a go-plugin one: one ever), which a reattach cannot know is"
                 " free, so plugbay (as go-plugin) does not reattach to one; for brokered callbacks use"
                 " PluginContainer(transport='unix'), where they go through the mounted socket folder")


def check_args(image: Any, plugins: Any, versioned: Any, port: Any, start_timeout: Any, call_timeout: Any) -> None:
    """PluginContainer's arguments, checked before anything is made (a wrong type failed later, bare)."""
    required_str(image, "PluginContainer's image", "plugbay-kv:latest")
    if plugins is not None:
        check_plugin_set(plugins, "PluginContainer's plugins")
    if versioned is not None:
        check_versioned_plugins(versioned, "PluginContainer's versioned_plugins")
    if not is_tcp_port(port):
        raise ConfigError(f"PluginContainer's container_port must be a port number (1-65535), got {port!r}")
    seconds(start_timeout, "PluginContainer's start_timeout", _MAX_WAIT, 60)
    seconds(call_timeout, "PluginContainer's call_timeout (None: no deadline)", _MAX_WAIT, 30, optional=True)


def checked_client_options(options: Any, handshake: HandshakeConfig) -> dict[str, Any]:
    """PluginContainer's ``client_options``, checked now as ClientConfig checks them (not at the first call)."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"PluginContainer's client_options must be a mapping of ClientConfig fields, got"
                          f" {type(options).__name__}")
    for key in options:
        if key == "multiplex_broker" and options[key]:
            raise ConfigError(f"PluginContainer(client_options={{'multiplex_broker': True}}): {_NO_MULTIPLEX}")
        if key in _OWN_CLIENT_OPTIONS:
            raise ConfigError(f"PluginContainer sets ClientConfig.{key} itself: pass PluginContainer({key}=...)")
        if key not in _CLIENT_OPTIONS and key != "multiplex_broker":
            raise ConfigError(f"PluginContainer's client_options takes the ClientConfig fields"
                              f" {', '.join(_CLIENT_OPTIONS)}, not {key!r} (it names how a plugin is started,"
                              " or is no ClientConfig field)")
    given = {k: v for k, v in options.items() if k != "multiplex_broker"}
    ClientConfig(handshake=handshake, **given)  # a wrong type or value: ConfigError naming the field
    return given
