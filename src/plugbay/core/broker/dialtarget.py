"""Where the host's broker dials a server the other side announced (a ConnInfo): the address is that side's word,
checked as strictly as a handshake's address, mapped by the runner (BrokerTransport.translator) and proven to be
the plugin's (BrokerTransport.prove) before anything dials it. A refusal at any step is a
BrokerAddressRefusedError naming the broker id, raised before the dial (the proof itself connects once only
where the kernel cannot tell who listens: runners/unixdiag.py).
"""

from __future__ import annotations

from collections.abc import Callable

from plugbay._proto.plugin import grpc_broker_pb2 as pb
from plugbay.core.broker.brokertransport import BrokerTransport
from plugbay.core.protocol.handshake import address_problem
from plugbay.errors import BrokerAddressRefusedError, MalformedHandshakeError


def dial_target(id: int, info: pb.ConnInfo, transport: BrokerTransport) -> tuple[str, str, list[Callable[[], None]]]:
    """(network, address to dial, what to run once the channel there closes, in that order) for broker ``id``
    announced as ``info``."""
    network, address = info.network, info.address
    problem = address_problem(network, address) if network in ("unix", "tcp") else None
    if problem is not None:  # the other side's word, checked as strictly as a handshake address
        raise BrokerAddressRefusedError(f"broker id {id} was announced at an address plugbay will not dial:"
                                        f" {problem}")
    translator = transport.translator
    cleanup: list[Callable[[], None]] = []
    mapped = network, address
    if translator is not None:
        try:  # a process runner refuses a tcp address off this machine (runners.announced), at once
            mapped = translator.plugin_to_host(network, address)
        except MalformedHandshakeError as exc:  # its refusal of a handshake's address: here a broker id's
            raise BrokerAddressRefusedError(f"broker id {id}: {exc.reason}") from None
        # what the runner holds for this address (a Docker socket's handle) goes with the channel
        cleanup.append(lambda: translator.release_address(*mapped))
    prove = transport.prove  # who listens there, proven as for the handshake's address (the host's)
    try:  # a proven unix socket is dialed through a handle on it: what is renamed onto its path is not
        dial_at, release = (mapped[1], None) if prove is None else prove((network, address), *mapped)
    except BaseException as exc:
        for func in cleanup:
            func()
        if isinstance(exc, MalformedHandshakeError):  # UnprovenAddressError: names who listens, the opt-out
            raise BrokerAddressRefusedError(f"broker id {id}: {exc.reason}") from None
        raise
    if release is not None:
        cleanup.append(release)  # closed first (cleanups run last to first), after the channel
    return mapped[0], dial_at, cleanup
