"""The Client's two long-lived RPC streams beside its calls: go-plugin's broker and GRPCStdio.

Both are kept off the first call's path where the plugin allows it: their
Python work would compete with that call for the GIL.
"""

from __future__ import annotations

from plugbay.core.broker.broker import BrokerTransport, GRPCBroker
from plugbay.core.broker.stream import host_broker
from plugbay.core.host.config import ClientConfig
from plugbay.core.host.stdio import StdioReader
from plugbay.core.protocol.handshake import HandshakeInfo
from plugbay.core.protocol.tls import CertKey, der_to_pem
from plugbay.core.transport.muxhost import HostMux
from plugbay.core.transport.secure import SecureChannel
from plugbay.runners.base import AttachedRunner

# Work kept off the first call (the GRPCStdio reader; a Go plugin's broker stream) begins when it
# returned or this long after start/dispense: a go-plugin handler that brokers before the host did
# waits this long at most for the stream.
DEFER = 0.05


def open_streams(conn: SecureChannel, info: HandshakeInfo, cert: CertKey | None, socket_dir: str | None,
                 runner: AttachedRunner, mux: HostMux | None, queues: bool, config: ClientConfig,
                 name: str) -> tuple[GRPCBroker, StdioReader]:
    """The broker (its stream opens on first use) and the stdio reader (``queues``: a plugbay plugin)."""
    peer = der_to_pem(info.server_cert) if (cert and info.server_cert) else None
    # The stream runs on grpc.aio on the shared loop (no thread per plugin) over a second
    # connection dialed like the first; multiplexed, a second connection would cost a bridged
    # stream with copy threads, so it stays on the channel there.
    broker = host_broker(conn.channel, BrokerTransport(
        tls=cert if peer else None, peer_cert_pem=peer, socket_dir=socket_dir,
        translator=runner, multiplex=mux is not None, mux=mux), lazy=True,
        redial=conn.redial if mux is None else None)
    # A plugbay plugin buffers its output until this stream asks (a full buffer drops and warns):
    # read at once. A go-plugin plugin's stream starts after the first unary call returned, or
    # DEFER after now if none comes; meanwhile the plugin's writes fill its pipe (64 KiB) and
    # only then wait.
    stdio = StdioReader(conn.channel, config.stdout_sink, config.stderr_sink, name,
                        delay=None if queues else DEFER)
    return broker, stdio
