"""go-plugin's protocol facts: the handshake line, certificates, hclog records.

Imports: plugbay.errors only (no sockets, no gRPC servers or channels).
"""
