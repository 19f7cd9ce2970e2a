"""The types of the pytest plugin's fixtures, for a test's annotations.

``def test_kv(plugin_process: StartPluginProcess) -> None`` type-checks each call: its positional arguments,
and its keyword options as ClientConfig's fields (``ClientOptions``: a misspelled or wrongly typed one is
an error), and gives a Client, where ``Callable[..., Client]`` checked none. plugin_container's ``runner=``
stays a mapping of DockerRunner's keyword arguments, checked at run time only. Types only: importing this
module loads neither pytest nor grpc.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, Unpack

if TYPE_CHECKING:
    from plugbay.core.broker.plugin import PluginSet, VersionedPlugins
    from plugbay.core.host.client import Client
    from plugbay.core.host.secure import SecureConfig
    from plugbay.core.host.stdio import Sink
    from plugbay.core.protocol.handshake import HandshakeConfig


class ClientOptions(TypedDict, total=False):
    """ClientConfig's fields that plugin_process and plugin_container take as keywords (each optional,
    ClientConfig's default): all but handshake and plugins (their arguments), cmd, runner and reattach (what
    they set themselves). tests/test_testing_fixture_options.py keeps this list equal to what they accept."""

    versioned_plugins: VersionedPlugins | None
    auto_mtls: bool | None
    require_tls: bool | None
    start_timeout: float
    call_timeout: float | None
    kill_grace: float
    min_port: int
    max_port: int
    multiplex_broker: bool
    mux_keepalive: tuple[float, ...]
    secure_config: SecureConfig | Sequence[SecureConfig] | None
    logger: logging.Logger | None
    stdout_sink: Sink | None
    stderr_sink: Sink | None
    env: Mapping[str, str]
    skip_host_env: bool
    name: str | None
    grpc_options: Sequence[tuple[str, Any]]
    raw_log_sink: Callable[[str], None] | None
    unix_socket_group: str | int | None
    unix_socket_temp_dir: str | None
    trust_announced_address: bool


class StartPluginProcess(Protocol):
    """The ``plugin_process`` fixture: a started Client on a local process."""

    def __call__(self, cmd: Sequence[str | os.PathLike[str]], handshake: HandshakeConfig,
                 plugins: PluginSet | None = None, **config: Unpack[ClientOptions]) -> Client: ...


class StartPluginContainer(Protocol):
    """The ``plugin_container`` fixture: a started Client on ``DockerRunner(image, **runner)``."""

    def __call__(self, image: str, handshake: HandshakeConfig, plugins: PluginSet | None = None, *,
                 runner: Mapping[str, Any] | None = None, **config: Unpack[ClientOptions]) -> Client: ...
