"""go-plugin's protocol facts: the handshake line, certificates, hclog records; which peer addresses may be dialled;
and the checks every layer shares (checks: the settings host and plugin both take; optionnames: the refusal of a
misspelled keyword option), kept here so that each says them in one wording.

Imports: plugbay.errors only (no sockets, no gRPC servers or channels).
"""
