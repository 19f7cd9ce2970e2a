"""The host side: Client, its configuration, launch, connect, the managed channel, stdio and logs.

Imports: the layers below (errors, protocol, transport, broker) and plugbay.runners.base.
"""
