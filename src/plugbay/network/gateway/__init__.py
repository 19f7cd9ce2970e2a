"""The plugbay gateway: serve an unmodified go-plugin plugin on the network. See gateway.py and cli.py.

Lazy, as plugbay.network is: importing the package (``python -m plugbay.network.gateway`` does, before
its __main__) pulls in neither grpc nor the gateway until a name is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ imports gateway.py on first use
    from plugbay.network.gateway.gateway import BROKER_REFUSAL as BROKER_REFUSAL
    from plugbay.network.gateway.gateway import Gateway as Gateway, GatewayConfig as GatewayConfig

__all__ = ["BROKER_REFUSAL", "Gateway", "GatewayConfig"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'plugbay.network.gateway' has no attribute {name!r}")
    from plugbay.network.gateway import gateway

    return getattr(gateway, name)
