"""Network mode: plugins as shared remote services, found by discovery and reached over provided mTLS.

Imports: every core layer (host, plugin, resilience) and plugbay.runners; nothing imports it back.
"""
