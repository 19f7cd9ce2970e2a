"""Bytes between host and plugin: sockets, accept loops, the grpcio-TLS-or-relay decision, yamux.

Imports: plugbay.errors and core.protocol; knows nothing of the broker, host or plugin side.
"""
