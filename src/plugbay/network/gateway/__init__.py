"""The plugbay gateway: serve an unmodified go-plugin plugin on the network. See gateway.py and cli.py."""

from plugbay.network.gateway.gateway import BROKER_REFUSAL, Gateway, GatewayConfig

__all__ = ["BROKER_REFUSAL", "Gateway", "GatewayConfig"]
