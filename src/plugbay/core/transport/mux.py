"""The multiplexed connection (PLUGIN_MULTIPLEX_GRPC), as go-plugin's internal/grpcmux.

The host opens ONE connection to the plugin's announced address and runs a
yamux session over it (plugbay.core.transport.yamux). The plugin's main gRPC
connection is a stream of that session; so is every brokered connection,
in either direction, so brokering works wherever the main address works: a
unix socket in a bind mount, a published port, a port-forward.

This module only routes and opens streams; the broker (plugbay.core.broker)
owns the knock protocol and tells a MuxSession, through ``expect``,
``forget``, ``accept_knock``, ``open_stream`` and ``connect_local``, where the
peer's next stream goes. On the plugin side streams that arrive without a
knock go to the main gRPC server; on the host side they are refused.
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

from plugbay.core.transport import admit, sockets
from plugbay.core.transport.bridges import bridge
from plugbay.core.transport.held import HeldStreams
from plugbay.core.transport.workers import Workers
from plugbay.core.transport.yamux import Session, Stream, StreamClosed
from plugbay.errors import BrokerClosedError, ConfigError, PlugbayError, TargetUnreachableError

log = logging.getLogger("plugbay.mux")

_SESSION_WAIT = 5.0  # go-plugin waits 5 s for the session to be established
_POLL = 0.2
_PING_WAIT = 2.0  # a held session that does not answer a ping this fast is given up for a new host
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
        self._workers = Workers("plugbay-mux-copy")  # the bridges' copy loops
        self.default_target: tuple[str, str] | None = None
        # held from knock to stream open, so the peer routes streams in knock order
        self.dial_lock = threading.Lock()
        # this side may open a brokered stream right after its knock: the peer holds a
        # stream that arrives before its knock (plugbay.core.transport.held)
        self.peer_holds = False
        self._held: HeldStreams | None = None  # this side holds such streams (a host)

    # -- routing of streams the peer opens (runs on the session reader thread)

    def _on_stream(self, stream: Stream) -> None:
        with self._lock:
            sid = self._knocks.popleft() if self._knocks else None
            target = self._targets.get(sid) if sid is not None else self.default_target
            if sid is None and target is None and self._held is not None and self._held.hold(stream):
                return  # its knock is on the way (an eager dialer)
        if target is None:
            log.debug("%s: refusing a stream nobody knocked for", self.name)
            stream.reset()
            return
        self._route(stream, target, sid)

    def _route(self, stream: Stream, target: tuple[str, str], sid: int | None) -> None:
        try:
            conn = sockets.dial(*target, timeout=2.0)
            conn.settimeout(None)
        except OSError as exc:
            log.warning("%s: cannot reach %s for broker id %s: %s", self.name, target, sid, exc)
            stream.reset()
            return
        try:
            bridge(stream, conn, self._workers)
        except RuntimeError:  # closing: bridge reset the stream and closed conn
            pass

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
            early = self._held.pop() if self._held is not None else None  # opened before its knock
            target = self._targets.get(id)
            if target is not None and early is None:
                self._knocks.append(id)
        if target is None:
            if early is not None:
                early.reset()  # the dialer resets it too, on hearing the error
            return f"no listener for id {id}"
        if early is not None:
            self._route(early, target, id)
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
        try:
            bridge(stream, conn, self._workers)
        except RuntimeError:
            raise BrokerClosedError(f"{self.name} is closed; restart the plugin") from None

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
        self._workers.close()

    def _close_extra(self) -> None:
        pass


class PluginFront(MuxSession):
    """Plugin side: owns the announced listener; yamux server over the host's connection."""

    def __init__(self, listener: socket.socket, target: tuple[str, str]) -> None:
        super().__init__("plugin-mux")
        self.default_target = target
        self._listener = listener
        self.address = sockets.listener_address(listener)
        listener.settimeout(_POLL)
        self._acceptor = threading.Thread(target=self._accept, name="plugbay-mux-accept", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        # go-plugin accepts one connection ever. plugbay admits a connection only once it
        # opened like a yamux client (admit.py), and lets it replace a session that is gone,
        # carries no stream, or no longer answers a ping; a live, busy session keeps the plugin.
        for conn, first in admit.admit_each(self._listener, lambda: self._closed):
            with self._lock:
                old = self._session
            if old is not None and not old.closed and old.open_streams and old.ping(_PING_WAIT):
                log.warning("refused a second multiplexed host connection: the current one is live")
                conn.close()
                continue
            if conn.family != socket.AF_UNIX:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._attach(Session(conn, client=False, on_stream=self._on_stream, name="mux-plugin",
                                 first=first))
            if old is not None and not old.closed:
                log.info("a new multiplexed host connection replaced an idle or unresponsive one")
                old.abort("replaced by a newer host connection")

    def _close_extra(self) -> None:
        self._acceptor.join(timeout=5)
        sockets.close_listener(self._listener)


class AcceptedSession(MuxSession):
    """Plugin side of one accepted connection: network mode serves one such session per host.

    Un-knocked streams go to ``target`` (that host's own gRPC server). Build it,
    give it to that server's broker, then ``run(conn)``; ``ended`` turns True
    once the host is gone, and the owner then calls ``close()``.
    """

    def __init__(self, target: tuple[str, str]) -> None:
        super().__init__("plugin-mux")
        self.default_target = target

    def run(self, conn: socket.socket) -> None:
        """Serve the yamux session on ``conn`` (once the target listens: streams route at once)."""
        conn.settimeout(None)
        self._attach(Session(conn, client=False, on_stream=self._on_stream, name="mux-net"))

    @property
    def ended(self) -> bool:
        with self._lock:
            return self._session is None or self._session.closed


class HostMux(MuxSession):
    """Host side: one connection to the plugin; the main channel dials ``local_address``.

    ``max_redials`` bounds how often a lost connection is made again (None: each
    time a stream is needed, which network mode uses: gRPC's reconnect backoff
    paces it there).
    """

    def __init__(self, network: str, address: str, timeout: float = 10.0,
                 max_redials: int | None = _MAX_REDIALS) -> None:
        super().__init__("host-mux")
        self._held = HeldStreams()
        self._target = (network, address)
        self._timeout = timeout
        self._max_redials = max_redials
        self._redials = 0
        self._redial_lock = threading.Lock()
        self._attach(self._first_dial())
        self._dir = tempfile.mkdtemp(prefix="plugbay-mux-")
        path = os.path.join(self._dir, "main.sock")
        self._listener = sockets.open_listener("unix", path)
        os.chmod(path, 0o600)
        self._listener.settimeout(_POLL)
        self.local_address = ("unix", path)
        self._acceptor = threading.Thread(target=self._accept, name="plugbay-mux-main", daemon=True)
        self._acceptor.start()

    def _first_dial(self) -> Session:
        network, address = self._target
        try:
            return self._dial()
        except ValueError:
            raise ConfigError(f"{network} address {address!r} is not an address (want HOST:PORT or a"
                              " unix socket path); check the address the plugin announced") from None
        except OSError as exc:
            raise TargetUnreachableError(
                f"cannot connect to the plugin's multiplexed address {network}:{address}"
                f" ({exc.strerror or exc}); check that the plugin is still running and listens"
                " there, and that the address can be reached from this host (a container's port"
                " published, a pod's port forwarded)") from None

    def _dial(self) -> Session:
        conn = sockets.dial(*self._target, self._timeout)
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
                      and (self._max_redials is None or self._redials < self._max_redials))
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
        def closed() -> bool:
            if self._held is not None:
                self._held.expire()  # this loop's poll is the held streams' clock
            return self._closed

        for conn in sockets.accept_each(self._listener, closed):
            try:
                conn.settimeout(None)
                self.connect_local(conn, self.open_stream())
            except PlugbayError:
                conn.close()

    def _close_extra(self) -> None:
        self._acceptor.join(timeout=5)
        if self._held is not None:
            self._held.clear()
        self._listener.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def plugin_front(listener: socket.socket, target: tuple[str, str]) -> PluginFront:
    """serve()'s seam: take over the announced listener, forward main streams to ``target``."""
    return PluginFront(listener, target)


class StreamBridge:
    """A private unix listener whose every connection rides one stream of the session.

    The first connection gets ``first``, or waits for the stream given to
    ``set_first`` (the dialer makes the listener and the channel while its
    knock travels); later ones (gRPC reconnects) get ``next_stream()``.
    ``start()`` runs the accept loop on the session's reused workers;
    ``stop()`` ends it without waiting, ``join()`` waits for it;
    ``abandon()`` frees the listener of a bridge that never started.
    """

    def __init__(self, mux: MuxSession, path: str, first: Stream | None, next_stream: Callable[[], Stream],
                 name: str) -> None:
        try:
            self._listener = sockets.open_listener("unix", path)
        except BaseException:
            if first is not None:
                first.reset()  # the stream would otherwise stay open on both sides
            raise
        self._listener.settimeout(_POLL)
        self._mux = mux
        self._cond = threading.Condition()
        self._first = [first] if first is not None else []
        self._pending = first is None  # the first connection waits for set_first()
        self._next = next_stream
        self._stop = threading.Event()
        self._done = threading.Event()
        self.name = name

    def start(self) -> None:
        try:
            self._mux._workers.run(self._accept)
        except RuntimeError:
            raise BrokerClosedError(f"{self._mux.name} is closed; restart the plugin") from None

    def set_first(self, first: Stream) -> None:
        with self._cond:
            if not self._stop.is_set():
                self._first, self._pending = [first], False
                self._cond.notify_all()
                return
        first.reset()  # stopped meanwhile: nobody will carry it

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def join(self, timeout: float) -> None:
        self._done.wait(timeout)

    def abandon(self) -> None:
        self.stop()
        sockets.close_listener(self._listener)
        self._done.set()

    def _stopped(self) -> bool:
        return self._stop.is_set() or self._mux._closed

    def _accept(self) -> None:
        try:
            for conn in sockets.accept_each(self._listener, self._stopped):
                conn.settimeout(None)
                with self._cond:
                    while self._pending and not self._stop.is_set():
                        self._cond.wait()
                    first = self._first.pop() if self._first else None
                    stopped = self._stop.is_set()
                if stopped:
                    conn.close()
                    if first is not None:
                        first.reset()
                    break
                try:
                    stream = first if first is not None else self._next()
                except PlugbayError as exc:
                    log.debug("%s: reconnect failed: %s", self.name, exc)
                    conn.close()
                    continue
                try:
                    self._mux.connect_local(conn, stream)
                except BrokerClosedError:
                    break  # connect_local reset the stream and closed conn
        finally:
            # this loop owns the listener: closing it under a blocked accept() could
            # hand its fd number to someone else
            sockets.close_listener(self._listener)
            self._done.set()

    def stop(self) -> None:
        # no join here: the channel's owner must not wait for the accept poll
        with self._cond:
            self._stop.set()
            first, self._first = self._first, []
            self._cond.notify_all()
        for stream in first:
            stream.reset()
