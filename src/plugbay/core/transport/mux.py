"""Multiplexed brokering (PLUGIN_MULTIPLEX_GRPC), as go-plugin's internal/grpcmux.

The host opens ONE connection to the plugin's announced address and runs a
yamux session over it (plugbay.core.transport.yamux). The plugin's main gRPC
connection is a stream of that session; so is every brokered connection,
in either direction, so brokering works wherever the main address works: a
unix socket in a bind mount, a published port, a port-forward.

Before opening a brokered stream the dialer *knocks* on the broker stream
(``ConnInfo{service_id, knock{knock: true}}``); the side serving that id
answers ``knock{knock: true, ack: true, error}`` after arranging that the
next stream the peer opens goes to that id's server. Knock-and-open is
serialised per side (go-plugin's dialMutex), so streams cannot be mixed up.
On the plugin side streams that arrive without a knock go to the main gRPC
server; on the host side they are refused.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from plugbay._proto.plugin import grpc_broker_pb2 as pb
from plugbay.core.protocol import tls as tlsmod
from plugbay.core.transport import relay as tlsrelay
from plugbay.errors import BrokerClosedError, BrokerError
from plugbay.core.transport.yamux import Session, Stream, StreamClosed, bridge

if TYPE_CHECKING:
    from plugbay.core.broker.broker import GRPCBroker

log = logging.getLogger("plugbay.mux")

_SESSION_WAIT = 5.0  # go-plugin waits 5 s for the session to be established
_POLL = 0.2
_MAX_REDIALS = 20  # per host session: a flapping forward is reported, not retried forever


class MuxSession:
    """One side of the multiplexed connection: routes streams, opens streams."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._session: Session | None = None
        self._closed = False
        self._targets: dict[int, tuple[str, str]] = {}
        self._knocks: deque[int] = deque()
        self._threads: set[threading.Thread] = set()
        self._tlock = threading.Lock()
        self.default_target: tuple[str, str] | None = None
        # held from knock to stream open, so the peer routes streams in knock order
        self.dial_lock = threading.Lock()

    # -- routing of streams the peer opens (runs on the session reader thread)

    def _on_stream(self, stream: Stream) -> None:
        with self._lock:
            sid = self._knocks.popleft() if self._knocks else None
            target = self._targets.get(sid) if sid is not None else self.default_target
        if target is None:
            log.debug("%s: refusing a stream nobody knocked for", self.name)
            stream.reset()
            return
        try:
            conn = tlsrelay.dial(*target, timeout=2.0)
            conn.settimeout(None)
        except OSError as exc:
            log.warning("%s: cannot reach %s for broker id %s: %s", self.name, target, sid, exc)
            stream.reset()
            return
        bridge(stream, conn, self._threads, self._tlock)

    def expect(self, id: int, target: tuple[str, str]) -> None:
        with self._lock:
            self._targets[id] = target

    def forget(self, id: int) -> None:
        with self._lock:
            self._targets.pop(id, None)

    def serves(self, id: int) -> bool:
        with self._lock:
            return id in self._targets

    def accept_knock(self, id: int) -> str:
        """Route the peer's next stream to ``id``; an error text if nothing serves it."""
        with self._lock:
            if id not in self._targets:
                return f"no listener for id {id}"
            self._knocks.append(id)
        return ""

    # -- opening streams

    def _attach(self, session: Session) -> None:
        with self._ready:
            self._session = session
            self._ready.notify_all()

    def open_stream(self, timeout: float = _SESSION_WAIT) -> Stream:
        with self._ready:
            if self._session is None or self._session.closed:
                self._ready.wait_for(lambda: self._closed or (self._session is not None
                                                              and not self._session.closed), timeout)
            session = self._session
            if self._closed or session is None or session.closed:
                why = session.close_reason if session is not None else "never established"
                raise BrokerClosedError(f"the multiplexed connection to the plugin is not up ({why});"
                                        " the plugin or host is gone, restart the plugin")
        try:
            return session.open()
        except StreamClosed as exc:
            raise BrokerClosedError(f"{exc}; restart the plugin") from exc

    def connect_local(self, conn: socket.socket, stream: Stream) -> None:
        bridge(stream, conn, self._threads, self._tlock)

    def close(self) -> None:
        with self._ready:
            if self._closed:
                return
            self._closed = True
            session = self._session
            self._ready.notify_all()
        if session is not None:
            session.close()
        self._close_extra()
        for _ in range(3):
            with self._tlock:
                threads = list(self._threads)
            if not threads:
                break
            for t in threads:
                t.join(timeout=5)

    def _close_extra(self) -> None:
        pass


class PluginFront(MuxSession):
    """Plugin side: owns the announced listener; yamux server over the host's connection."""

    def __init__(self, listener: socket.socket, target: tuple[str, str]) -> None:
        super().__init__("plugin-mux")
        self.default_target = target
        self._listener = listener
        self.address = tlsrelay.listener_address(listener)
        listener.settimeout(_POLL)
        self._acceptor = threading.Thread(target=self._accept, name="plugbay-mux-accept", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        # go-plugin accepts one connection; plugbay takes a new one only once the old one is gone.
        for conn in tlsrelay.accept_each(self._listener, lambda: self._closed):
            with self._lock:
                live = self._session is not None and not self._session.closed
            if live:
                conn.close()
                continue
            conn.settimeout(None)
            if conn.family != socket.AF_UNIX:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._attach(Session(conn, client=False, on_stream=self._on_stream, name="mux-plugin"))

    def _close_extra(self) -> None:
        self._acceptor.join(timeout=5)
        tlsrelay.close_listener(self._listener)


class HostMux(MuxSession):
    """Host side: one connection to the plugin; the main channel dials ``local_address``."""

    def __init__(self, network: str, address: str, timeout: float = 10.0) -> None:
        super().__init__("host-mux")
        self._target = (network, address)
        self._timeout = timeout
        self._redials = 0
        self._redial_lock = threading.Lock()
        self._attach(self._dial())
        self._dir = tempfile.mkdtemp(prefix="plugbay-mux-")
        path = os.path.join(self._dir, "main.sock")
        self._listener = tlsrelay.open_listener("unix", path)
        os.chmod(path, 0o600)
        self._listener.settimeout(_POLL)
        self.local_address = ("unix", path)
        self._acceptor = threading.Thread(target=self._accept, name="plugbay-mux-main", daemon=True)
        self._acceptor.start()

    def _dial(self) -> Session:
        conn = tlsrelay.dial(*self._target, self._timeout)
        conn.settimeout(None)
        return Session(conn, client=True, on_stream=self._on_stream, name="mux-host")

    def open_stream(self, timeout: float = _SESSION_WAIT) -> Stream:
        # A forwarded port (kubectl port-forward, a proxy) may accept and then drop the
        # connection; the plugin takes a new one once the old one is gone, so dial again.
        with self._redial_lock:
            self._redial_if_lost()
        return super().open_stream(timeout)

    def _redial_if_lost(self) -> None:
        with self._lock:
            session = self._session
            redial = (not self._closed and session is not None and session.closed
                      and self._redials < _MAX_REDIALS)
            if redial:
                self._redials += 1
        if redial:
            assert session is not None
            log.debug("multiplexed connection lost (%s); dialing the plugin again", session.close_reason)
            try:
                self._attach(self._dial())
            except OSError as exc:
                raise BrokerClosedError(f"the multiplexed connection to the plugin was lost"
                                        f" ({session.close_reason}) and cannot be made again: {exc}") from exc

    def _accept(self) -> None:
        for conn in tlsrelay.accept_each(self._listener, lambda: self._closed):
            try:
                conn.settimeout(None)
                self.connect_local(conn, self.open_stream())
            except BrokerError:
                conn.close()

    def _close_extra(self) -> None:
        self._acceptor.join(timeout=5)
        self._listener.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def plugin_front(listener: socket.socket, target: tuple[str, str]) -> PluginFront:
    """serve()'s seam: take over the announced listener, forward main streams to ``target``."""
    return PluginFront(listener, target)


# ------------------------------------------------------------ broker glue


def _mux(broker: GRPCBroker) -> MuxSession:
    mux = broker.transport.mux
    assert mux is not None
    return mux


def serve_multiplexed(broker: GRPCBroker, id: int, server: grpc.Server,
                      cleanup: list[Callable[[], None]]) -> None:
    from plugbay.core.broker.broker import _server_creds
    from plugbay.core.broker.channels import _bind, _unlink

    mux = _mux(broker)
    private = broker._private_path(f"mux{id}")
    own, peer = broker.transport.tls, broker.transport.peer_cert_pem
    target = ("unix", private)
    if own is not None and peer is not None and broker._needs_relay():
        _bind(server, private, None)
        relay = tlsrelay.TLSRelay(tlsrelay.open_listener("unix", broker._private_path(f"tls{id}")),
                                  target, tlsmod.server_context(own, peer), "terminate")
        cleanup.append(relay.close)
        target = relay.address
    else:
        _bind(server, private, _server_creds(broker.transport))
    server.start()
    cleanup.append(lambda: _unlink(private))
    cleanup.append(lambda: mux.forget(id))
    mux.expect(id, target)
    # a knock that came before this accept_and_serve is answered now (go-plugin buffers it)
    with broker._cond:
        early = id in broker._mux_ids
        broker._mux_ids.discard(id)
    if early:
        _ack(broker, id)


def on_knock(broker: GRPCBroker, msg: pb.ConnInfo) -> None:
    mux = broker.transport.mux
    if mux is None:
        broker._send(pb.ConnInfo(service_id=msg.service_id, knock=pb.ConnInfo.Knock(
            knock=True, ack=True, error="this side does not multiplex brokered connections")))
        return
    if not mux.serves(msg.service_id):
        with broker._cond:
            broker._mux_ids.add(msg.service_id)
        return
    _ack(broker, msg.service_id)


def _ack(broker: GRPCBroker, id: int) -> None:
    error = _mux(broker).accept_knock(id)
    try:
        broker._send(pb.ConnInfo(service_id=id, knock=pb.ConnInfo.Knock(knock=True, ack=True, error=error)))
    except BrokerClosedError:
        pass


def _knock_and_open(broker: GRPCBroker, id: int, timeout: float) -> Stream:
    mux = _mux(broker)
    with mux.dial_lock:
        broker._send(pb.ConnInfo(service_id=id, knock=pb.ConnInfo.Knock(knock=True)))
        ack = broker._wait_for(broker._acks, id, timeout, "the knock acknowledgement")
        assert isinstance(ack, pb.ConnInfo)
        if not ack.knock.ack:
            raise BrokerError(f"handshake failed for multiplexing on id {id}: expected knock and ack,"
                              f" got {ack.knock}; the peer speaks a different broker protocol")
        if ack.knock.error:
            raise BrokerError(f"failed to knock for broker id {id}: {ack.knock.error}; the other side"
                              " must call accept_and_serve with this id first")
        return mux.open_stream()


def dial_multiplexed(broker: GRPCBroker, id: int, timeout: float) -> grpc.Channel:
    mux = _mux(broker)
    first: list[Stream] = [_knock_and_open(broker, id, timeout)]
    path = broker._private_path(f"dial{id}")
    try:
        listener = tlsrelay.open_listener("unix", path)
    except BaseException:
        first[0].reset()  # the knocked stream would otherwise stay open on both sides
        raise
    listener.settimeout(_POLL)
    stop = threading.Event()

    def accept() -> None:
        # each connection the channel makes is one knocked stream (gRPC may reconnect)
        try:
            for conn in tlsrelay.accept_each(listener, stop.is_set):
                conn.settimeout(None)
                try:
                    stream = first.pop() if first else _knock_and_open(broker, id, timeout)
                except BrokerError as exc:
                    log.debug("brokered reconnect to id %d failed: %s", id, exc)
                    conn.close()
                    continue
                mux.connect_local(conn, stream)
        finally:
            # this thread owns the listener: closing it under a blocked accept() could
            # hand its fd number to someone else
            tlsrelay.close_listener(listener)

    thread = threading.Thread(target=accept, name=f"plugbay-mux-dial-{id}", daemon=True)
    with broker._cond:  # started under the lock: close() must never join an unstarted thread
        broker._threads[:] = [t for t in broker._threads if t.is_alive()]
        broker._threads.append(thread)  # broker.close() joins it
        thread.start()

    def close() -> None:
        # no join here: the channel's owner must not wait for the accept poll
        stop.set()
        for stream in first:
            stream.reset()

    return broker._channel_to("unix", path, [close])
