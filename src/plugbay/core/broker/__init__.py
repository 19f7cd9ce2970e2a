"""go-plugin's GRPCBroker (per-connection and multiplexed with knocks) and the plugin definition.

Imports: plugbay.errors, core.protocol and core.transport.
"""
