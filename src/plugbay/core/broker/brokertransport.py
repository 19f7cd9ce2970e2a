"""How a GRPCBroker makes its connections on one side: AutoMTLS, socket folder, address mapping, multiplexing.

The Client and serve() build a BrokerTransport from the handshake and the runner; the
broker only reads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plugbay.core.protocol.records import Frozen

if TYPE_CHECKING:  # types only: a Protocol class costs every plugin's start its creation
    from collections.abc import Callable
    from typing import Protocol

    from plugbay.core.protocol import tls as tlsmod
    from plugbay.core.transport.muxsession import MuxSession

    class AddressTranslator(Protocol):
        """Maps addresses across the runner's boundary (a Runner on the host side)."""

        def plugin_to_host(self, network: str, address: str) -> tuple[str, str]: ...

        def host_to_plugin(self, network: str, address: str) -> tuple[str, str]: ...

        def release_address(self, network: str, address: str) -> None: ...

    class AddressProof(Protocol):
        """Proves that the plugin listens at a brokered address before the host dials it (host side)."""

        def __call__(self, announced: tuple[str, str], network: str, address: str) -> ProvenAddress: ...

    # What an AddressProof answers: the address to dial in its place (a handle on the unix socket it proved)
    # and what to run once nothing dials it any more (None: nothing to let go)
    ProvenAddress = tuple[str, Callable[[], None] | None]


class BrokerTransport(Frozen):
    """How brokered connections are made on this side.

    ``tls``: this side's AutoMTLS certificate (None: plaintext).
    ``peer_cert_pem``: the other side's certificate, the only one trusted.
    ``socket_dir``: where per-connection unix sockets go (default: $TMPDIR).
    ``translator``: host side only, the runner that maps addresses.
    ``multiplex``: use the plugin's one connection (needs ``mux``).
    ``mux``: the yamux session the Client/serve() built for multiplexing.
    ``prove``: host side only, the proof (the host's, over its runner: plugbay.core.host.socketpin) that the
    plugin listens at an address a ConnInfo announced (``announced``: (network, address) as it came), mapped
    by ``translator``; it raises MalformedHandshakeError (UnprovenAddressError) when it refuses, and the
    broker raises BrokerAddressRefusedError. None: dialed as mapped (a peer whose word is trusted).
    """

    _fields = ("tls", "peer_cert_pem", "socket_dir", "translator", "multiplex", "mux", "prove")
    tls: tlsmod.CertKey | None
    peer_cert_pem: bytes | None
    socket_dir: str | None
    translator: AddressTranslator | None
    multiplex: bool
    mux: MuxSession | None
    prove: AddressProof | None

    def __init__(self, tls: tlsmod.CertKey | None = None, peer_cert_pem: bytes | None = None,
                 socket_dir: str | None = None, translator: AddressTranslator | None = None,
                 multiplex: bool = False, mux: MuxSession | None = None, prove: AddressProof | None = None) -> None:
        self._set(tls=tls, peer_cert_pem=peer_cert_pem, socket_dir=socket_dir, translator=translator,
                  multiplex=multiplex, mux=mux, prove=prove)
