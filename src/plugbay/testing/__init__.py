"""Test helpers: a testcontainers-python container for plugin images and a pytest plugin.

``PluginContainer`` starts a plugin image with testcontainers' usual
lifecycle and hands back a connected plugbay Client or a dispensed stub. The
pytest plugin (entry point ``plugbay``) adds the fixtures ``plugin_process``,
``plugin_container``, ``plugbay_docker`` and ``plugbay_image``; ``StartPluginProcess`` and
``StartPluginContainer`` are the first two's types, for a test's annotations (``ClientOptions``: their
keyword options).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a type checker sees the class (with its methods), not __getattr__'s Any
    from plugbay.testing.container import PluginContainer as PluginContainer
    from plugbay.testing.fixturetypes import (ClientOptions as ClientOptions,
                                              StartPluginContainer as StartPluginContainer,
                                              StartPluginProcess as StartPluginProcess)

__all__ = ["ClientOptions", "PluginContainer", "StartPluginContainer", "StartPluginProcess"]


def __getattr__(name: str) -> Any:
    # Lazy: the pytest plugin loads this package in every pytest run, and
    # testcontainers (the `testing` extra) may not be installed.
    if name == "PluginContainer":
        try:
            from plugbay.testing.container import PluginContainer
        except ImportError as exc:
            if exc.name is None or exc.name.partition(".")[0] not in ("testcontainers", "docker"):
                raise
            from plugbay.errors import ConfigError

            raise ConfigError(f"plugbay.testing.PluginContainer needs testcontainers and the docker SDK ({exc});"
                              " pip install 'plugbay[testing]'") from exc
        return PluginContainer
    if name in ("ClientOptions", "StartPluginContainer", "StartPluginProcess"):
        from plugbay.testing import fixturetypes

        return getattr(fixturetypes, name)
    raise AttributeError(name)
