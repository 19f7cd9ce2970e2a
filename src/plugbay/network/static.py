"""The resolver of static:/// and unix:/// targets: a fixed set of endpoints (no DNS library needed)."""

from __future__ import annotations

from collections.abc import Sequence

from plugbay.network.resolver import Endpoint, OnChange


class StaticResolver:
    """A fixed set of endpoints (static:/// and unix:///): reported once, never changes."""

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = list(endpoints)

    def start(self, on_change: OnChange) -> None:
        on_change(list(self.endpoints))

    def close(self) -> None:
        pass
