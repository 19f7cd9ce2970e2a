"""go-plugin's GRPCBroker: extra gRPC connections between host and plugin, by id.

Both sides hold one long-lived ``plugin.GRPCBroker/StartStream`` bidi stream
(the host calls it, the plugin serves it) and exchange ``ConnInfo`` on it:

* per-connection mode (go-plugin's original): ``accept_and_serve(id)`` opens a
  fresh listener, starts a gRPC server on it and announces
  ``ConnInfo{service_id, network, address}``; ``dial(id)`` waits for that
  announcement, maps the address (the host maps with its runner) and dials it.
* multiplexed mode (PLUGIN_MULTIPLEX_GRPC): brokered connections travel as
  yamux streams inside the one connection to the plugin's announced address;
  the dialer *knocks* (``ConnInfo.knock``) so the other side routes its next
  incoming stream to the server of that id. The broker owns the knock
  protocol (plugbay.core.broker.knock); plugbay.core.transport.mux only
  routes and opens streams.

AutoMTLS applies to brokered connections as in current go-plugin: the serving
side presents its certificate and requires the peer's, the dialing side
presents its own and verifies the peer's. Where the peer's certificate is one
grpcio cannot handshake with (a Go peer's P-521), TLS runs through the
OpenSSL relay instead (decided in plugbay.core.transport.secure).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from plugbay._proto.plugin import grpc_broker_pb2 as pb
from plugbay.core.broker.brokertransport import BrokerTransport
from plugbay.core.broker.dialtarget import dial_target
from plugbay.core.broker.knock import Multiplexed
from plugbay.core.broker.wire import StreamEnd
from plugbay.core.protocol.checks import check_count, check_seconds
from plugbay.core.transport.sockets import private_folder_root
from plugbay.core.transport.tempdirs import private_room
from plugbay.errors import (
    BrokerClosedError,
    BrokerError,
    BrokerTimeoutError,
    ConfigError,
)

# Imported where used: a plugin that never brokers a connection (most) loads neither the
# brokered servers' and channels' code nor TLS (plugbay.core.transport.secure), nor yamux.
if TYPE_CHECKING:
    import asyncio

    from plugbay.core.broker.channels import BrokeredChannel, Served
    from plugbay.core.broker.spares import ServerSource
    from plugbay.core.broker.wire import Opening, Outbox, Reader
    from plugbay.core.transport.aiohandlers import LoopSource
    from plugbay.core.transport.handlerloop import Release
    from plugbay.core.transport.muxbridge import StreamBridge
    from plugbay.core.transport.muxsession import MuxSession
    from plugbay.core.transport.secure import MutualTLS

log = logging.getLogger("plugbay.broker")

DEFAULT_DIAL_TIMEOUT = 5.0  # go-plugin waits 5 s for a ConnInfo or a knock ack


class GRPCBroker(StreamEnd, Multiplexed):
    """Brokers extra gRPC connections by id. Build it with plugin_broker() / host_broker()."""

    def __init__(self, transport: BrokerTransport, side: str,
                 dial_timeout: float = DEFAULT_DIAL_TIMEOUT) -> None:
        if transport.tls is not None and transport.peer_cert_pem is None:
            raise ConfigError("BrokerTransport has a TLS certificate but no peer_cert_pem;"
                              " pass the other side's AutoMTLS certificate too")
        if transport.multiplex and transport.mux is None:
            raise ConfigError("BrokerTransport(multiplex=True) needs the mux session (mux=...)")
        self.transport = transport
        self.side = side
        self.dial_timeout = check_seconds(dial_timeout, "GRPCBroker.dial_timeout", DEFAULT_DIAL_TIMEOUT)
        self._cond = threading.Condition()
        self._next = 0
        self._announced: dict[int, tuple[pb.ConnInfo, float]] = {}
        self._acks: dict[int, tuple[pb.ConnInfo, float]] = {}
        self._outbox: list[pb.ConnInfo] = []  # sent before the stream exists
        self._send_q: Outbox | None = None
        self._lost: str | None = None
        self._closed = False
        self._served: list[Served] = []
        self._channels: list[BrokeredChannel] = []
        self._loop_release: Release | None = None  # the hold on plugbay's asyncio handler loop (_handler_loop)
        self._threads: list[Reader] = []
        self.call: Any = None  # the host's StartStream call, cancelled by close()
        self._opener: Callable[[float], Opening | None] | None = None  # opens the stream on first use (lazy host)
        self._opening: Opening | None = None  # a stream being opened on the shared loop
        self._private_dir: str | None = None
        self._private_made = False  # the folder is the host's (private_room): its sockets go one by one
        self._early_knocks: dict[int, float] = {}  # knocked before accept_and_serve: when, oldest first
        self._late_acks: set[int] = set()  # acks not waited for: the dialer's stream proved them
        self._gave_up: set[int] = set()  # knocks whose dial timed out (knock.py _take_route)
        self._bridges: list[StreamBridge] = []  # multiplexed dials' local listeners
        self._tls: MutualTLS | None = None
        if transport.tls is not None and transport.peer_cert_pem is not None:
            from plugbay.core.transport.secure import MutualTLS

            self._tls = MutualTLS(transport.tls, transport.peer_cert_pem)
        self._source: ServerSource | None = None  # made at the first accept_and_serve

    # ------------------------------------------------------------- public API

    def next_id(self) -> int:
        """A fresh id for accept_and_serve (unique on this side; uint32 like go-plugin)."""
        self._ensure_stream()  # the id goes to the other side, which will dial or announce it
        with self._cond:
            self._next = (self._next + 1) & 0xFFFFFFFF
            return self._next

    def accept_and_serve(self, id: int, register: Callable[[grpc.Server], None], *,
                         loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Serve a new gRPC server for ``id``; returns once it listens. Runs until stop_serving(id) or close().

        ``register`` adds the services to the (already started) server, e.g.
        ``lambda s: add_FooServicer_to_server(servicer, s)``. An asyncio servicer's ``async def``
        methods run on ``loop`` when given (an AsyncClient host passes its running loop, so they
        share its objects), else on plugbay's own asyncio handler loop (one per process).
        """
        id = _check_id(id)  # before a server is built for it
        self._check_open()
        self._ensure_stream()
        from plugbay.core.broker.channels import local_socket_error
        from plugbay.core.broker.registrar import Registrar

        try:
            served, path = self._servers().get()
        except (OSError, BrokerError) as exc:  # its socket, a TLS relay's, or their folder
            if self._closed:  # close() removed the folders it was binding in: not a TMPDIR problem
                raise BrokerClosedError("the broker closed while serving; start a new Client") from exc
            if isinstance(exc, BrokerError):
                raise
            raise local_socket_error(f"serve broker id {id}", exc) from exc
        served.id = id
        try:
            register(Registrar(served.server, lambda: self._handler_loop(served, loop)))
            if self.transport.multiplex:
                self._serve_multiplexed(id, served, path)
            else:
                self._serve_per_connection(id, path)
        except BaseException:
            served.stop()
            raise
        with self._cond:
            closed = self._closed
            if not closed:
                self._served.append(served)
        if closed:
            served.stop()
            raise BrokerClosedError("the broker closed while serving; start a new Client")
        self._servers().refill()  # the next callback's server starts while this one runs

    def _handler_loop(self, served: Served, loop: asyncio.AbstractEventLoop | None) -> LoopSource:
        """Where ``served``'s async handlers run. plugbay's own loop is held until close() (once per
        broker: a callback server per call must not restart it); a caller's, until ``served`` stops."""
        from plugbay.core.transport.aiohandlers import LOOP, CallerLoop

        if loop is not None:
            caller = CallerLoop(loop, LOOP)
            served.cleanup.append(caller.release)
            return caller
        with self._cond:
            if not self._closed and self._loop_release is None:
                self._loop_release = LOOP.hold()
        return LOOP

    def stop_serving(self, id: int) -> None:
        """Stop the server(s) accept_and_serve started for ``id`` and free their listeners.

        go-plugin's host stops a brokered server once the call that used it
        returns; without this they live until close().
        """
        with self._cond:
            mine = [s for s in self._served if s.id == id]
            self._served = [s for s in self._served if s.id != id]
        for served in mine:
            from plugbay.core.broker.channels import stop_served

            source = self._servers()
            stop_served(served, grace=None, reap=source.reap, recycle=source.recycle)

    def dial(self, id: int, timeout: float | None = None) -> grpc.Channel:
        """A channel to the server the other side serves as ``id``.

        Raises BrokerTimeoutError when ``id`` is not announced (or, multiplexed,
        the knock is not acknowledged) within ``timeout`` (default dial_timeout),
        BrokerClosedError when the broker stream is gone, BrokerAddressRefusedError when the
        announced address is not dialed (plugbay.core.broker.dialtarget).
        """
        id = _check_id(id)
        wait = self.dial_timeout if timeout is None else check_seconds(timeout, "timeout", DEFAULT_DIAL_TIMEOUT)
        self._check_open()
        self._ensure_stream()
        if self.transport.multiplex:
            return self._dial_multiplexed(id, wait)
        network, dial_at, cleanup = dial_target(id, self._wait_announcement(id, wait), self.transport)
        return self._channel_to(network, dial_at, cleanup)

    def close(self, *, wait: bool = True, within: float | None = None) -> None:
        """End the stream, stop every brokered server and channel, free sockets and threads.

        Calls still running on brokered servers get 1 s to answer, then are cancelled, their handlers not
        waited for (stop_all_served). ``within`` (a Client's kill_grace) bounds that and the end of the
        asyncio handlers' loop (handlerloop.release_within), else about 5 s under an async handler that
        ignores its cancel or blocks the loop. ``wait=False`` (a plugin process stopping): running calls are
        cancelled at once and their worker threads, like the stream's reader, are not joined: a handler that
        does not return kept the plugin process alive until its host killed it; a Go plugin exits when Serve
        returns, whatever its goroutines do."""
        ends = None if within is None else time.monotonic() + max(within, 0.0)
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            served, self._served = self._served, []
            channels, self._channels = self._channels, []
            loop_release, self._loop_release = self._loop_release, None
            send_q = self._send_q
            source = self._source  # none is made from here on (_servers)
        if send_q is not None:
            send_q.put(None)
        if self.call is not None:
            self.call.cancel()
        for ch in channels:
            ch.close()
        if served and not wait:
            from plugbay.core.broker.channels import abandon_served

            for s in served:
                abandon_served(s)
        if served and wait:  # not waiting for handlers still running (see stop_all_served)
            from plugbay.core.broker.channels import stop_all_served

            stop_all_served(served, ends)
        if source is not None:
            source.close(wait=wait)
        if loop_release is not None:
            from plugbay.core.transport.handlerloop import release_within  # loaded: it made loop_release

            loop_release(release_within(ends))
        self._join_bridges()
        for t in list(self._threads) if wait else ():  # started under the lock, so all of them are started
            t.join(timeout=10)
        if self._private_dir is not None and self._private_made:
            shutil.rmtree(self._private_dir, ignore_errors=True)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def serving(self) -> bool:
        """Whether brokered servers of this side run (accept_and_serve, not yet stopped)."""
        with self._cond:
            return bool(self._served)

    @property
    def lost_reason(self) -> str | None:
        """Why the broker stream ended, or None while it is up."""
        return self._lost

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error("the broker is closed (its Client was killed or the plugin"
                                     " shut down); start a new Client to broker connections")

    def _wait_for(self, table: dict[int, Any], id: int, timeout: float, what: str,
                  instead: Callable[[], Any] | None = None) -> Any:
        """Pop ``table[id]`` once it arrives; ``instead`` (called under the lock each time the
        condition wakes) may answer first with what it returns when that is not None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if id in table:
                    return table.pop(id)
                if instead is not None and (got := instead()) is not None:
                    return got
                if self._closed:
                    raise self._closed_error("the broker was closed while waiting for id"
                                             f" {id}; nothing to dial any more")
                if self._final_loss() is not None:
                    raise BrokerClosedError(f"while waiting for broker id {id}: " + self._lost_message())
                left = deadline - time.monotonic()
                if left <= 0:
                    # a plugin's stream that ended waits for the next host's (StreamEnd._final_loss)
                    ended = "" if self._lost is None else (
                        f" (the host's broker stream ended: {self._lost}; no host opened another since)")
                    raise BrokerTimeoutError(
                        f"timed out after {timeout:g}s waiting for {what} of broker id {id}{ended}; the other"
                        " side must call accept_and_serve with this id (check the id it passed you)"
                        " before or shortly after you dial")
                self._cond.wait(left)

    # ------------------------------------------------------- per-connection

    def _mux_session(self) -> MuxSession | None:
        return self.transport.mux

    def _servers(self) -> ServerSource:
        # made under the lock: each ServerSource joins the process's spare holder and close()
        # leaves it once, so a second one made by a racing first call (or after close) kept the
        # holder's spare server, builder thread and folder for good
        with self._cond:
            if self._source is None:
                self._check_open()
                from plugbay.core.broker.spares import ServerSource

                self._source = ServerSource(self._tls, self._private_dir_path,
                                            None if self.transport.multiplex else self._public_path)
            return self._source

    def _private_dir_path(self) -> str:
        with self._cond:
            if self._private_dir is None:
                # a dial or serve racing close() must not make a folder close() already missed
                self._check_open()
                # beside the sockets the host asked for (PLUGIN_UNIX_SOCKET_DIR): the temp dir may be read-only
                self._private_dir, self._private_made = private_room(
                    "plugbay-broker-", private_folder_root(self.transport.socket_dir))
            return self._private_dir

    def _public_path(self) -> str:
        folder = self.transport.socket_dir or tempfile.gettempdir()
        return os.path.join(folder, f"plugin{os.urandom(5).hex()}")

    def _serve_per_connection(self, id: int, path: str) -> None:
        network, address = "unix", path
        if self.transport.translator is not None:
            network, address = self.transport.translator.host_to_plugin(network, address)
        self._send(pb.ConnInfo(service_id=id, network=network, address=address))

    def _channel_to(self, network: str, address: str, cleanup: list[Callable[[], None]] | None = None,
                    options: Sequence[tuple[str, Any]] = ()) -> BrokeredChannel:
        """A channel to a brokered server; ``cleanup`` runs when it (or the broker) closes."""
        from plugbay.core.broker.channels import BrokeredChannel, local_socket_error
        from plugbay.core.transport.secure import dial as secure_dial

        undo = cleanup if cleanup is not None else []
        try:
            if network not in ("unix", "tcp"):
                raise BrokerError(f"broker announced unknown network {network!r} at {address!r};"
                                  " go-plugin brokers over 'unix' or 'tcp' only")
            secured = secure_dial(network, address, self._tls, self._private_dir_path(), options)
        except BaseException as exc:
            for func in reversed(undo):
                func()
            if isinstance(exc, OSError):  # a TLS relay's listener or its folder
                raise local_socket_error(f"dial the brokered server at {network}:{address}", exc, self._closed) from exc
            raise
        channel = BrokeredChannel(secured.channel, [*undo, *secured.cleanup], self._untrack)
        with self._cond:
            closed = self._closed
            if not closed:
                self._channels.append(channel)
        if closed:
            channel.close()
            raise BrokerClosedError("the broker closed while dialing; start a new Client")
        return channel

    def _untrack(self, channel: BrokeredChannel) -> None:
        with self._cond:
            if channel in self._channels:
                self._channels.remove(channel)


def _check_id(id: object) -> int:
    """A broker id goes on the wire as a uint32: anything else failed in protobuf (a raw ValueError or
    TypeError, after a server was built for it) or was waited for until the dial timed out. An integer
    of another kind (numpy's) comes back as an int, as protobuf took it."""
    try:
        return check_count(id, "a broker id (a uint32, as in go-plugin)", 0, 0xFFFFFFFF)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; use the id the other side passed you, or broker.next_id()") from None
