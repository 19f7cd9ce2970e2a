"""The channel of a RemoteClient's brokered stub: pinned to one endpoint, hooked as the main channel."""

from __future__ import annotations

from typing import Any

from plugbay.core.host.channel import ManagedChannel


class MainHook:
    """For a brokered stub's channel (pinned to one endpoint), sync or grpc.aio: the resilience layers
    installed on the client's main channel (plugbay.install) run its calls too, whenever installed."""

    def __init__(self, main: Any, *args: Any) -> None:
        self._main = main
        super().__init__(*args)

    @property
    def call_hook(self) -> Any:
        return self._main.call_hook

    @call_hook.setter
    def call_hook(self, hook: Any) -> None:
        pass  # the main channel's, always (install() sets that one)


class PinnedChannel(MainHook, ManagedChannel):
    """A brokered stub's channel on the sync RemoteClient."""
