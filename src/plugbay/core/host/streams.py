"""The Client's two long-lived RPC streams beside its calls: go-plugin's broker and GRPCStdio.

Both are kept off the first call's path where the plugin allows it: their
Python work would compete with that call for the GIL (StreamKick begins them).
"""

from __future__ import annotations

import math
import threading

from plugbay.core.broker.aiofork import grpc_aio_usable
from plugbay.core.broker.broker import GRPCBroker
from plugbay.core.broker.brokertransport import BrokerTransport
from plugbay.core.broker.stream import host_broker
from plugbay.core.host.config import ClientConfig
from plugbay.core.host.socketpin import BrokeredProof
from plugbay.core.host.stdio import AioStdio, StdioReader
from plugbay.core.protocol.handshake import HandshakeInfo
from plugbay.core.protocol.tls import CertKey, der_to_pem
from plugbay.core.transport.aioloop import Deferred
from plugbay.core.transport.muxhost import HostMux
from plugbay.core.transport.secure import AioChannelShare, SecureChannel
from plugbay.runners.base import AttachedRunner

# Work kept off the first call (the GRPCStdio reader; a Go plugin's broker stream) begins when it
# returned or this long after start/dispense: a go-plugin handler that brokers before the host did
# waits this long at most for the stream.
DEFER = 0.05
# A stream that begins only when StreamKick (or, for the broker, a use of it) says so.
HELD = math.inf


Stdio = StdioReader | AioStdio


class Streams:
    """What open_streams() made: the broker and the two ways to read GRPCStdio (see stdio_for)."""

    def __init__(self, broker: GRPCBroker, reader: StdioReader, aio: AioStdio | None) -> None:
        self.broker = broker
        self._reader = reader
        self._aio = aio

    def stdio_for(self, queues: bool) -> Stdio:
        """The reader to hold for a plugin that ``queues`` (a plugbay plugin) or not (a go-plugin one).

        A go-plugin plugin keeps its stream for its life: with no sink, read it on the loop
        (no thread). A plugbay plugin asked to discard ends it at once: the main channel's
        short call then costs no second connection on the way to its first call."""
        return self._aio if self._aio is not None and not queues else self._reader


def open_streams(conn: SecureChannel, info: HandshakeInfo, cert: CertKey | None, socket_dir: str | None,
                 runner: AttachedRunner, mux: HostMux | None, config: ClientConfig, name: str) -> Streams:
    """The broker (its stream opens on first use) and the stdio readers (held: see StreamKick.set_stdio).

    Made while the connection is being set up, before the health check says who the plugin is."""
    peer = der_to_pem(info.server_cert) if (cert and info.server_cert) else None
    # The stream runs on grpc.aio on the shared loop (no thread per plugin) over a second
    # connection dialed like the first; multiplexed, a second connection would cost a bridged
    # stream with copy threads, so it stays on the channel there. In a forked child of a process
    # that ran grpc.aio, grpc.aio calls never end: both streams stay on the channel there too.
    share = AioChannelShare(conn.redial) if mux is None and conn.redial is not None and grpc_aio_usable() else None
    # A ConnInfo's address is proven as the handshake's was (connecting.py): a reattach's always. Multiplexed,
    # none is dialed: brokered connections are streams of the one connection, proven when it was made.
    proven = mux is None and (not config.trust_announced_address or config.reattach is not None)
    prove = BrokeredProof(runner, info, name, config.reattach is not None) if proven else None
    broker = host_broker(conn.channel, BrokerTransport(
        tls=cert if peer else None, peer_cert_pem=peer, socket_dir=socket_dir, translator=runner,
        multiplex=mux is not None, mux=mux, prove=prove),
        lazy=True, redial=share)
    reader = StdioReader(conn.channel, config.stdout_sink, config.stderr_sink, name, delay=HELD)
    sinkless = config.stdout_sink is None and config.stderr_sink is None
    return Streams(broker, reader, AioStdio(share) if share is not None and sinkless else None)


class StreamKick:
    """Begins a go-plugin plugin's held streams: once the first call returned, or DEFER after spawn.

    One timer on the shared loop, armed when the plugin is spawned (while the host waits for its
    handshake anyway) instead of one per stream after the handshake: nothing wakes the loop's
    thread between the handshake line and the first call but that call's end (now()), so its
    Python work never competes with the call for the GIL. A stream made after the kick fired
    (a slow handshake, a late dispense) begins at once.
    """

    def __init__(self, delay: float = DEFER) -> None:
        self._lock = threading.Lock()
        self._fired = False
        self._stdio: Stdio | None = None
        self._broker: GRPCBroker | None = None
        self._deferred = Deferred(self._fire, delay)

    def set_stdio(self, stdio: Stdio, queues: bool) -> None:
        """The reader (made with delay=HELD) to start: at the kick, or now for a plugin that ``queues``.

        A plugbay plugin (it said so in its health answer) buffers its output until the stream
        asks (a full buffer drops and warns): read at once. A go-plugin plugin's writes fill its
        pipe (64 KiB) until the kick, and only then wait."""
        with self._lock:
            self._stdio, fired = stdio, self._fired
        if fired or queues:
            stdio.start()

    def open_broker(self, broker: GRPCBroker) -> None:
        """Make the broker's stream opening now and begin it at the kick (a use begins it sooner)."""
        broker.open_stream(wait=False, delay=HELD)
        with self._lock:
            self._broker, fired = broker, self._fired
        if fired:
            broker.hurry_stream()

    def now(self) -> None:
        """Kick now (on the shared loop; thread-safe, a no-op once kicked)."""
        self._deferred.now()

    def cancel(self) -> None:
        """Never kick (close and kill); waits for a kick running now to end."""
        self._deferred.cancel()

    def _fire(self) -> None:
        with self._lock:
            self._fired = True
            stdio, broker = self._stdio, self._broker
        if stdio is not None:
            stdio.start()
        if broker is not None:
            broker.hurry_stream()
