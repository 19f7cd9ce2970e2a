"""Network mode: plugins as shared remote services, found by discovery and reached over provided mTLS.

Imports: every core layer (host, plugin, resilience) and plugbay.runners; nothing imports it back.
The host side: :func:`connect` / :class:`RemoteClient` (remote.py; AsyncRemoteClient for asyncio,
aioremote.py, aiopool.py, aiopoolcalls.py and aiopoolstream.py), the target syntax (targets.py),
resolvers (static.py, resolvers.py for DNS), the endpoint pool (pool.py, channelbase.py, poolcalls.py,
ejection.py) and NetworkTLS (tls.py). The serving side is plugbay.core.plugin.network and gateway/.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see (explicit re-exports); at run time __getattr__ imports each on use
    from plugbay.network.aioremote import AsyncRemoteClient as AsyncRemoteClient
    from plugbay.network.ejection import OutlierPolicy as OutlierPolicy
    from plugbay.network.pool import EndpointPool as EndpointPool
    from plugbay.network.poolmetrics import EndpointMetrics as EndpointMetrics, PoolMetrics as PoolMetrics
    from plugbay.network.remote import RemoteClient as RemoteClient, RemoteConfig as RemoteConfig, connect as connect
    from plugbay.network.remoteoptions import RemoteOptions as RemoteOptions
    from plugbay.network.resolver import Endpoint as Endpoint
    from plugbay.network.targets import Target as Target, parse_target as parse_target
    from plugbay.network.tls import NetworkTLS as NetworkTLS

_NAMES = {
    "connect": "plugbay.network.remote",
    "RemoteClient": "plugbay.network.remote",
    "RemoteConfig": "plugbay.network.remote",
    "RemoteOptions": "plugbay.network.remoteoptions",
    "AsyncRemoteClient": "plugbay.network.aioremote",
    "NetworkTLS": "plugbay.network.tls",
    "OutlierPolicy": "plugbay.network.ejection",
    "EndpointPool": "plugbay.network.pool",
    "PoolMetrics": "plugbay.network.poolmetrics",
    "EndpointMetrics": "plugbay.network.poolmetrics",
    "parse_target": "plugbay.network.targets",
    "Target": "plugbay.network.targets",
    "Endpoint": "plugbay.network.resolver",
}
# a literal list, as type checkers read it; `from plugbay.network import *` took typing's names, none of these
__all__ = ["AsyncRemoteClient", "Endpoint", "EndpointMetrics", "EndpointPool", "NetworkTLS", "OutlierPolicy",
           "PoolMetrics", "RemoteClient", "RemoteConfig", "RemoteOptions", "Target", "connect", "parse_target"]


def __getattr__(name: str) -> Any:
    """Lazy: importing plugbay.network does not pull in dnspython or grpc until a name is used."""
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'plugbay.network' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
