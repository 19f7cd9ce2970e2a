"""The protocol version a host and a plugin agree on, as go-plugin's server picks it."""

from __future__ import annotations

from collections.abc import Iterable

from plugbay.errors import VersionMismatchError


def negotiate_version(host_versions: Iterable[int], plugin_versions: Iterable[int]) -> int:
    """Pick the highest version both sides support, as go-plugin's server does."""
    host = sorted(set(host_versions))
    plugin = sorted(set(plugin_versions))
    common = set(host) & set(plugin)
    if not common:
        raise VersionMismatchError(host, plugin)
    return max(common)
