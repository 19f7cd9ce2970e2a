"""plugbay.network.connect: one call from a target to a started RemoteClient.

    with connect("static:///10.0.0.5:7001", handshake=HANDSHAKE, plugins=PLUGINS,
                 tls=NetworkTLS("host.crt", "host.key", "ca.crt")) as client:
        kv = client.dispense("kv_grpc")
"""

from __future__ import annotations

from typing import Any

from plugbay.core.protocol.handshake import HandshakeConfig
from plugbay.network.remote import RemoteClient, RemoteConfig


def connect(target: str, *, handshake: HandshakeConfig, **options: Any) -> RemoteClient:
    """Start a RemoteClient for ``target``; ``options`` are RemoteConfig's fields. Close it (or use ``with``)."""
    client = RemoteClient(RemoteConfig(target=target, handshake=handshake, **options))
    try:
        client.start()
    except BaseException:
        client.kill()
        raise
    return client
