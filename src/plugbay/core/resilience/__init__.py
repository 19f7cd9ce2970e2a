"""Call layers over a Client: retries, circuit breaking, health watching, supervised restart.

Imports: every core layer below it (host included) and plugbay.runners.base.
"""
