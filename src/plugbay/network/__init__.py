"""Network mode: plugins as shared remote services, found by discovery and reached over provided mTLS.

Imports: every core layer (host, plugin, resilience) and plugbay.runners; nothing imports it back.
The host side: :func:`connect` / :class:`RemoteClient` (remote.py), the target syntax (targets.py),
resolvers (static.py, resolvers.py for DNS), the endpoint pool (pool.py, channelbase.py, poolcalls.py,
ejection.py) and NetworkTLS (tls.py). The serving side is plugbay.core.plugin.network and gateway/.
"""

from __future__ import annotations

from typing import Any

_NAMES = {
    "connect": "plugbay.network.remote",
    "RemoteClient": "plugbay.network.remote",
    "RemoteConfig": "plugbay.network.remote",
    "NetworkTLS": "plugbay.network.tls",
    "OutlierPolicy": "plugbay.network.ejection",
    "EndpointPool": "plugbay.network.pool",
    "parse_target": "plugbay.network.targets",
    "Target": "plugbay.network.targets",
    "Endpoint": "plugbay.network.resolver",
}


def __getattr__(name: str) -> Any:
    """Lazy: importing plugbay.network does not pull in dnspython or grpc until a name is used."""
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'plugbay.network' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
