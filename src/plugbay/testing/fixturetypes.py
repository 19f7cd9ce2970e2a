"""The types of the pytest plugin's fixtures, for a test's annotations.

``def test_kv(plugin_process: StartPluginProcess) -> None`` type-checks each call's arguments and
gives a Client, where ``Callable[..., Client]`` checked none. Types only: importing this module loads
neither pytest nor grpc.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from plugbay.core.broker.plugin import PluginSet
    from plugbay.core.host.client import Client
    from plugbay.core.protocol.handshake import HandshakeConfig


class StartPluginProcess(Protocol):
    """The ``plugin_process`` fixture: a started Client on a local process (``**config``: ClientConfig's fields)."""

    def __call__(self, cmd: Sequence[str | os.PathLike[str]], handshake: HandshakeConfig,
                 plugins: PluginSet | None = None, **config: Any) -> Client: ...


class StartPluginContainer(Protocol):
    """The ``plugin_container`` fixture: a started Client on ``DockerRunner(image, **runner)``."""

    def __call__(self, image: str, handshake: HandshakeConfig, plugins: PluginSet | None = None, *,
                 runner: Mapping[str, Any] | None = None, **config: Any) -> Client: ...
