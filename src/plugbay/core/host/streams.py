"""The Client's two long-lived RPC streams beside its calls: go-plugin's broker and GRPCStdio.

Both are kept off the first call's path where the plugin allows it: their
Python work would compete with that call for the GIL (StreamKick begins them).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading

import grpc

from plugbay.core.broker.aiofork import grpc_aio_usable
from plugbay.core.broker.broker import GRPCBroker
from plugbay.core.broker.brokertransport import BrokerTransport
from plugbay.core.broker.stream import host_broker
from plugbay.core.host.config import ClientConfig
from plugbay.core.host.stdio import AioStdio, StdioReader
from plugbay.core.protocol.handshake import HandshakeInfo
from plugbay.core.protocol.tls import CertKey, der_to_pem
from plugbay.core.transport import aioloop
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
_log = logging.getLogger("plugbay.client")
_SETTLED = (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE,
            grpc.ChannelConnectivity.SHUTDOWN)


Stdio = StdioReader | AioStdio


class Streams:
    """What open_streams() made: the broker, the two ways to read GRPCStdio (see stdio_for) and the
    streams' second connection when it is dialed during the start (``early``: see EarlyConnection)."""

    def __init__(self, broker: GRPCBroker, reader: StdioReader, aio: AioStdio | None,
                 early: EarlyConnection | None = None) -> None:
        self.broker = broker
        self._reader = reader
        self._aio = aio
        self.early = early

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
    broker = host_broker(conn.channel, BrokerTransport(
        tls=cert if peer else None, peer_cert_pem=peer, socket_dir=socket_dir,
        translator=runner, multiplex=mux is not None, mux=mux), lazy=True, redial=share)
    reader = StdioReader(conn.channel, config.stdout_sink, config.stderr_sink, name, delay=HELD)
    sinkless = config.stdout_sink is None and config.stderr_sink is None
    # Through the OpenSSL relay (a Go plugin's P-521 certificate) the second connection costs a full
    # handshake on the shared loop and in the plugin: dialed now, beside the first, it is made during
    # the start instead of under the user's first calls.
    early = EarlyConnection(share) if share is not None and conn.mode == "relay-tls" else None
    return Streams(broker, reader, AioStdio(share) if share is not None and sinkless else None, early)


class EarlyConnection:
    """A hold on an AioChannelShare that dials its connection now, for streams that begin later.

    The streams take holds of their own when they begin; this one is given back after
    that (StreamKick), or at close/kill, so the connection stays up in between.
    """

    def __init__(self, share: AioChannelShare) -> None:
        self._share = share
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._released = False
        self._holding = False  # loop thread only, as _task
        self._task: asyncio.Task[None] | None = None
        self._lease = aioloop.shared().acquire()
        if not self._lease.call_soon(self._begin):
            self._released = True
            self._ready.set()
            self._lease.release()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the connection to be ready (or the attempt given up); True if so."""
        return self._ready.wait(timeout)

    def release(self) -> None:
        """Give the hold back (idempotent, any thread): the last holder's release closes the channel."""
        with self._lock:
            if self._released:
                return
            self._released = True
        if not self._lease.call_soon(self._end):
            self._ready.set()
            self._lease.release()

    # ------------------------------------------------------------- loop thread

    def _begin(self) -> None:
        if self._released:  # given back before it began: _end (queued after this) frees the lease
            return
        channel = self._share.acquire()
        self._holding = True
        self._task = asyncio.get_running_loop().create_task(self._connect(channel))

    async def _connect(self, channel: grpc.aio.Channel) -> None:
        try:
            # up, or given up at its first failure (grpcio would retry it for ever): the streams redial
            state = channel.get_state(try_to_connect=True)
            while state not in _SETTLED:
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=True)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # the streams dial it again when they begin
            _log.debug("dialing the streams' connection early failed: %r", exc)
        finally:
            self._ready.set()

    def _end(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._holding:
            self._holding = False
            asyncio.get_running_loop().create_task(self._give_back())
        else:
            self._ready.set()
            self._lease.release()

    async def _give_back(self) -> None:
        try:
            await self._share.release()
        except Exception as exc:
            _log.debug("closing the streams' early connection: %r", exc)
        finally:
            self._ready.set()
            self._lease.release()


class StreamKick:
    """Begins a go-plugin plugin's held streams: once the first call returned, or DEFER after spawn.

    One timer on the shared loop, armed when the plugin is spawned (while the host waits for its
    handshake anyway) instead of one per stream after the handshake: nothing wakes the loop's
    thread between the handshake line and the first call but that call's end (now()), so its
    Python work never competes with the call for the GIL. A stream made after the kick fired
    (a slow handshake, a late dispense) begins at once.
    """

    def __init__(self, delay: float | None = None) -> None:
        self._lock = threading.Lock()
        self._fired = False
        self._stdio: Stdio | None = None
        self._broker: GRPCBroker | None = None
        self._early: EarlyConnection | None = None
        self._deferred = Deferred(self._fire, DEFER if delay is None else delay)

    def keep_early(self, early: EarlyConnection) -> bool:
        """Hold ``early`` until the streams begin (or cancel()); False, and given back now, if they
        began already."""
        with self._lock:
            fired = self._fired
            if not fired:
                self._early = early
        if fired:
            early.release()
        return not fired

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
        with self._lock:
            early, self._early = self._early, None
        if early is not None:
            early.release()

    def _fire(self) -> None:
        with self._lock:
            self._fired = True
            stdio, broker, early = self._stdio, self._broker, self._early
            self._early = None
        if stdio is not None:
            stdio.start()
        if broker is not None:
            broker.hurry_stream()
        if early is not None:  # after the streams took their holds (queued before this on the loop)
            early.release()
