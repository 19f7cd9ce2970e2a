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
  incoming stream to the server of that id. See plugbay.core.transport.mux.

AutoMTLS applies to brokered connections as in current go-plugin: the serving
side presents its certificate and requires the peer's, the dialing side
presents its own and verifies the peer's. Where the peer's certificate is one
grpcio cannot handshake with (a Go peer's P-521), TLS runs through
plugbay.core.transport.relay instead.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from plugbay._proto.plugin import grpc_broker_pb2 as pb
from plugbay._proto.plugin import grpc_broker_pb2_grpc as pb_grpc
from plugbay.core.protocol import tls as tlsmod
from plugbay.core.transport import relay as tlsrelay
from plugbay.core.broker.channels import (_CHANNEL_OPTIONS, _TLS_OPTIONS, BrokeredChannel, _bind, _Served,
                                     _share_socket, _stop_served, _target, _unlink)
from plugbay.errors import BrokerClosedError, BrokerError, BrokerTimeoutError, ConfigError
from plugbay.runners.base import AttachedRunner

if TYPE_CHECKING:
    from plugbay.core.transport.mux import MuxSession

log = logging.getLogger("plugbay.broker")

DEFAULT_DIAL_TIMEOUT = 5.0  # go-plugin waits 5 s for a ConnInfo or a knock ack
_ANNOUNCE_TTL = 60.0  # unclaimed announcements are dropped after this
_SERVER_WORKERS = 16



@dataclass(frozen=True)
class BrokerTransport:
    """How brokered connections are made on this side.

    ``tls``: this side's AutoMTLS certificate (None: plaintext).
    ``peer_cert_pem``: the other side's certificate, the only one trusted.
    ``socket_dir``: where per-connection unix sockets go (default: $TMPDIR).
    ``translator``: host side only, the runner that maps addresses.
    ``multiplex``: use the plugin's one connection (needs ``mux``).
    ``mux``: the yamux session the Client/serve() built for multiplexing.
    """

    tls: tlsmod.CertKey | None = None
    peer_cert_pem: bytes | None = None
    socket_dir: str | None = None
    translator: AttachedRunner | None = None
    multiplex: bool = False
    mux: MuxSession | None = None


class GRPCBroker:
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
        self.dial_timeout = dial_timeout
        self._cond = threading.Condition()
        self._next = 0
        self._announced: dict[int, tuple[pb.ConnInfo, float]] = {}
        self._acks: dict[int, pb.ConnInfo] = {}
        self._outbox: list[pb.ConnInfo] = []  # sent before the stream exists
        self._send_q: queue.Queue[pb.ConnInfo | None] | None = None
        self._lost: str | None = None
        self._closed = False
        self._served: list[_Served] = []
        self._channels: list[BrokeredChannel] = []
        self._cleanup: list[Callable[[], None]] = []
        self._threads: list[threading.Thread] = []
        self._call: Any = None
        self._private_dir: str | None = None
        self._mux_ids: set[int] = set()

    # ------------------------------------------------------------- public API

    def next_id(self) -> int:
        """A fresh id for accept_and_serve (unique on this side; uint32 like go-plugin)."""
        with self._cond:
            self._next = (self._next + 1) & 0xFFFFFFFF
            return self._next

    def accept_and_serve(self, id: int, register: Callable[[grpc.Server], None]) -> None:
        """Serve a new gRPC server for ``id``; returns once it listens. Runs until close()."""
        self._check_open()
        executor = ThreadPoolExecutor(max_workers=_SERVER_WORKERS,
                                      thread_name_prefix=f"plugbay-brokered-{id}")
        server = grpc.server(executor, options=_CHANNEL_OPTIONS)
        served = _Served(id, server, executor, [])
        try:
            register(server)
            if self.transport.multiplex:
                self._serve_multiplexed(id, served)
            else:
                self._serve_per_connection(id, served)
        except BaseException:
            _stop_served(served)
            raise
        with self._cond:
            self._served.append(served)

    def stop_serving(self, id: int) -> None:
        """Stop the server(s) accept_and_serve started for ``id`` and free their listeners.

        go-plugin's host stops a brokered server once the call that used it
        returns; without this they live until close().
        """
        with self._cond:
            mine = [s for s in self._served if s.id == id]
            self._served = [s for s in self._served if s.id != id]
        for served in mine:
            _stop_served(served)

    def dial(self, id: int, timeout: float | None = None) -> grpc.Channel:
        """A channel to the server the other side serves as ``id``.

        Raises BrokerTimeoutError when ``id`` is not announced (or, multiplexed,
        the knock is not acknowledged) within ``timeout`` (default dial_timeout),
        BrokerClosedError when the broker stream is gone.
        """
        self._check_open()
        wait = self.dial_timeout if timeout is None else timeout
        if self.transport.multiplex:
            return self._dial_multiplexed(id, wait)
        info = self._wait_announcement(id, wait)
        network, address = info.network, info.address
        if self.transport.translator is not None:
            network, address = self.transport.translator.plugin_to_host(network, address)
        return self._channel_to(network, address)

    def close(self) -> None:
        """End the stream, stop every brokered server and channel, free sockets and threads."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            served, self._served = self._served, []
            channels, self._channels = self._channels, []
            cleanup, self._cleanup = self._cleanup, []
            send_q = self._send_q
        if send_q is not None:
            send_q.put(None)
        if self._call is not None:
            self._call.cancel()
        for ch in channels:
            ch.close()
        for s in served:
            _stop_served(s)
        for func in reversed(cleanup):
            func()
        for t in list(self._threads):
            if t.ident is not None:  # started (threads are started under the lock)
                t.join(timeout=10)
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def lost_reason(self) -> str | None:
        """Why the broker stream ended, or None while it is up."""
        return self._lost

    # ------------------------------------------------------- stream plumbing

    def _attach(self, send_q: queue.Queue[pb.ConnInfo | None]) -> None:
        with self._cond:
            old = self._send_q
            self._send_q = send_q
            self._lost = None
            for msg in self._outbox:
                send_q.put(msg)
            self._outbox.clear()
        if old is not None:
            old.put(None)

    def _detach(self, send_q: queue.Queue[pb.ConnInfo | None], reason: str) -> None:
        with self._cond:
            if self._send_q is not send_q:
                return  # a newer stream took over
            self._send_q = None
            self._lost = reason
            self._cond.notify_all()
        log.debug("broker stream ended: %s", reason)

    def _send(self, msg: pb.ConnInfo) -> None:
        with self._cond:
            if self._closed:
                raise BrokerClosedError("the broker is closed; no more brokered connections can be made")
            if self._send_q is None:
                if self._lost is not None:
                    raise BrokerClosedError(self._lost_message())
                self._outbox.append(msg)
                return
            self._send_q.put(msg)

    def _receive(self, msg: pb.ConnInfo) -> None:
        if msg.HasField("knock") and msg.knock.knock and not msg.knock.ack:
            self._on_knock(msg)
            return
        now = time.monotonic()
        with self._cond:
            if msg.HasField("knock"):
                self._acks[msg.service_id] = msg
            else:
                for key, (_, at) in list(self._announced.items()):
                    if now - at > _ANNOUNCE_TTL:
                        del self._announced[key]
                self._announced[msg.service_id] = (msg, now)
            self._cond.notify_all()

    def _lost_message(self) -> str:
        return (f"the broker stream to the other side ended ({self._lost}); the plugin or host"
                " is gone or closed its broker. Restart the plugin (new Client) to broker again")

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerClosedError("the broker is closed (its Client was killed or the plugin"
                                    " shut down); start a new Client to broker connections")

    def _wait_for(self, table: dict[int, Any], id: int, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if id in table:
                    return table.pop(id)
                if self._closed:
                    raise BrokerClosedError("the broker was closed while waiting for id"
                                            f" {id}; nothing to dial any more")
                if self._lost is not None:
                    raise BrokerClosedError(f"while waiting for broker id {id}: " + self._lost_message())
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrokerTimeoutError(
                        f"timed out after {timeout:g}s waiting for {what} of broker id {id}; the other"
                        " side must call accept_and_serve with this id (check the id it passed you)"
                        " before or shortly after you dial")
                self._cond.wait(left)

    def _wait_announcement(self, id: int, timeout: float) -> pb.ConnInfo:
        info, _ = self._wait_for(self._announced, id, timeout, "the connection info")
        assert isinstance(info, pb.ConnInfo)
        return info

    # ------------------------------------------------------- per-connection

    def _private_path(self, stem: str) -> str:
        with self._cond:
            if self._private_dir is None:
                self._private_dir = tempfile.mkdtemp(prefix="plugbay-broker-")
        return os.path.join(self._private_dir, f"{stem}-{secrets.token_hex(4)}.sock")

    def _public_path(self) -> str:
        folder = self.transport.socket_dir or tempfile.gettempdir()
        return os.path.join(folder, f"plugin{secrets.token_hex(5)}")

    def _needs_relay(self) -> bool:
        peer = self.transport.peer_cert_pem
        return self.transport.tls is not None and peer is not None and not tlsmod.grpc_can_use(peer)

    def _serve_per_connection(self, id: int, served: _Served) -> None:
        path = self._public_path()
        own, peer = self.transport.tls, self.transport.peer_cert_pem
        if own is not None and peer is not None and self._needs_relay():
            private = self._private_path(f"srv{id}")
            _bind(served.server, private, None)
            served.server.start()
            relay = tlsrelay.TLSRelay(tlsrelay.open_listener("unix", path), ("unix", private),
                                      tlsmod.server_context(own, peer), "terminate")
            served.cleanup.append(relay.close)
        else:
            _bind(served.server, path, _server_creds(self.transport))
            served.server.start()
            served.cleanup.append(lambda: _unlink(path))
        _share_socket(path)
        network, address = "unix", path
        if self.transport.translator is not None:
            network, address = self.transport.translator.host_to_plugin(network, address)
        self._send(pb.ConnInfo(service_id=id, network=network, address=address))

    def _channel_to(self, network: str, address: str,
                    cleanup: list[Callable[[], None]] | None = None) -> grpc.Channel:
        """A channel to a brokered server; ``cleanup`` runs when it (or the broker) closes."""
        own, peer = self.transport.tls, self.transport.peer_cert_pem
        undo = cleanup if cleanup is not None else []
        try:
            if own is not None and peer is not None and self._needs_relay():
                relay = tlsrelay.TLSRelay(tlsrelay.open_listener("unix", self._private_path("dial")),
                                          (network, address), tlsmod.client_context(own, peer), "originate")
                undo.append(relay.close)
                network, address = relay.address
                raw = grpc.insecure_channel(_target(network, address), options=_CHANNEL_OPTIONS)
            elif network not in ("unix", "tcp"):
                raise BrokerError(f"broker announced unknown network {network!r} at {address!r};"
                                  " go-plugin brokers over 'unix' or 'tcp' only")
            elif own is None or peer is None:
                raw = grpc.insecure_channel(_target(network, address), options=_CHANNEL_OPTIONS)
            else:
                creds = grpc.ssl_channel_credentials(root_certificates=peer, private_key=own.key_pem,
                                                     certificate_chain=own.cert_pem)
                raw = grpc.secure_channel(_target(network, address), creds,
                                          options=_CHANNEL_OPTIONS + _TLS_OPTIONS)
        except BaseException:
            for func in reversed(undo):
                func()
            raise
        channel = BrokeredChannel(raw, undo, self._untrack)
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

    # ----------------------------------------------------------- multiplexed

    def _serve_multiplexed(self, id: int, served: _Served) -> None:
        from plugbay.core.transport import mux

        mux.serve_multiplexed(self, id, served.server, served.cleanup)

    def _dial_multiplexed(self, id: int, timeout: float) -> grpc.Channel:
        from plugbay.core.transport import mux

        return mux.dial_multiplexed(self, id, timeout)

    def _on_knock(self, msg: pb.ConnInfo) -> None:
        from plugbay.core.transport import mux

        mux.on_knock(self, msg)


# ------------------------------------------------------------------ helpers


def _server_creds(transport: BrokerTransport) -> grpc.ServerCredentials | None:
    if transport.tls is None or transport.peer_cert_pem is None:
        return None
    return grpc.ssl_server_credentials([(transport.tls.key_pem, transport.tls.cert_pem)],
                                       root_certificates=transport.peer_cert_pem,
                                       require_client_auth=True)


# ---------------------------------------------------------------- factories


class _BrokerServicer(pb_grpc.GRPCBrokerServicer):
    def __init__(self, broker: GRPCBroker) -> None:
        self._broker = broker

    def StartStream(self, request_iterator: Iterator[pb.ConnInfo],
                    context: grpc.ServicerContext) -> Iterator[pb.ConnInfo]:
        broker = self._broker
        send_q: queue.Queue[pb.ConnInfo | None] = queue.Queue()
        context.add_callback(lambda: send_q.put(None))

        def receive() -> None:
            reason = "the host ended the stream"
            try:
                for msg in request_iterator:
                    broker._receive(msg)
            except grpc.RpcError as exc:
                reason = f"stream error: {exc}"
            except Exception as exc:  # a bad message must not kill the stream silently
                reason = f"broker failure: {exc!r}"
                log.exception("broker stream receive failed")
            broker._detach(send_q, reason)
            send_q.put(None)

        reader = threading.Thread(target=receive, name="plugbay-broker-recv", daemon=True)
        with broker._cond:  # close() joins _threads: never let it see an unstarted one
            if broker._closed:
                return
            broker._threads.append(reader)
            broker._attach(send_q)
            reader.start()
        while True:
            item = send_q.get()
            if item is None:
                break
            yield item
        broker._detach(send_q, "the plugin's broker stream ended")


def plugin_broker(server: grpc.Server, transport: BrokerTransport,
                  dial_timeout: float = DEFAULT_DIAL_TIMEOUT) -> GRPCBroker:
    """Plugin side: register the GRPCBroker service on ``server`` (not yet started).

    The stream starts when the host calls StartStream; announcements made
    before that are queued. The server needs a worker thread for the stream.
    """
    broker = GRPCBroker(transport, "plugin", dial_timeout)
    pb_grpc.add_GRPCBrokerServicer_to_server(_BrokerServicer(broker), server)  # type: ignore[no-untyped-call]
    return broker


def host_broker(channel: grpc.Channel, transport: BrokerTransport,
                dial_timeout: float = DEFAULT_DIAL_TIMEOUT) -> GRPCBroker:
    """Host side: open the StartStream on ``channel`` and broker over it."""
    broker = GRPCBroker(transport, "host", dial_timeout)
    send_q: queue.Queue[pb.ConnInfo | None] = queue.Queue()

    def requests() -> Iterator[pb.ConnInfo]:
        while True:
            item = send_q.get()
            if item is None:
                return
            yield item

    # No deadline: the stream lives as long as the plugin (go-plugin does the same).
    stub = pb_grpc.GRPCBrokerStub(channel)  # type: ignore[no-untyped-call]
    call = stub.StartStream(requests(), timeout=None)
    broker._call = call
    broker._attach(send_q)

    def receive() -> None:
        reason = "the plugin ended the stream"
        try:
            for msg in call:
                broker._receive(msg)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            reason = f"stream failed with {code}: {exc.details() if hasattr(exc, 'details') else exc}"
        except Exception as exc:
            reason = f"broker failure: {exc!r}"
            log.exception("broker stream receive failed")
        broker._detach(send_q, reason)
        send_q.put(None)

    reader = threading.Thread(target=receive, name="plugbay-broker-recv", daemon=True)
    broker._threads.append(reader)
    reader.start()
    return broker
