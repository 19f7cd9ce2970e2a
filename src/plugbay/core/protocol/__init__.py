"""go-plugin's protocol facts: the handshake line, certificates, hclog records; which peer addresses may be dialled.

Imports: plugbay.errors only (no sockets, no gRPC servers or channels).
"""
