"""The host side of the multiplexed connection: one connection to the plugin, redialed when lost.

The host's main gRPC channel dials a private unix listener (``local_address``)
whose every connection rides a new stream of the session; streams the plugin
opens are refused unless a knock announced them (or they are held until it
arrives: plugbay.core.transport.held).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable

from plugbay.core.transport import sockets
from plugbay.core.transport.handlenames import handle_path
from plugbay.core.transport.held import HeldStreams
from plugbay.core.transport.keepalive import Keepalive
from plugbay.core.transport.muxsession import POLL, SESSION_WAIT, MuxSession
from plugbay.core.transport.tempdirs import make_tempdir
from plugbay.core.transport.yamux import Session, Stream, failed_by_peer
from plugbay.core.transport.yrefuse import refused
from plugbay.errors import (
    BrokerClosedError,
    ConfigError,
    PlugbayError,
    TargetUnreachableError,
)

# what TMPDIR can be blamed for (a path too long for a unix socket has no errno)
_FOLDER_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.ENOENT, errno.ENAMETOOLONG,
                  errno.ENOTDIR, errno.EDQUOT}
_MAX_REDIALS = 20  # per host session: a flapping forward is reported, not retried forever

log = logging.getLogger("plugbay.mux")


class HostMux(MuxSession):
    """Host side: one connection to the plugin; the main channel dials ``local_address``.

    ``max_redials`` bounds how often a lost connection is made again (None: each
    time a stream is needed, which network mode uses: gRPC's reconnect backoff
    paces it there). ``check``: given each connection to the plugin as soon as it is made, before
    a byte is written; what it raises ends that dial (a process plugin's listener proven on it).
    """

    def __init__(self, network: str, address: str, timeout: float = 10.0,
                 max_redials: int | None = _MAX_REDIALS, keepalive: Keepalive | None = None,
                 check: Callable[[socket.socket], None] | None = None) -> None:
        super().__init__("host-mux")
        self.peer = "the plugin"
        self._keepalive = keepalive or Keepalive()
        self._held = HeldStreams()
        self._target = (network, address)
        self._check = check  # raises unless the connection made reaches the plugin's own listener, before a byte goes
        self._timeout = timeout
        self._max_redials = max_redials
        self._redials = 0
        self._redial_lock = threading.Lock()
        self._refusal: str | None = None  # why the plugin refused the latest session, until one is accepted
        # the private folder and listener come before the dial, so a failure at any step
        # undoes all that the earlier steps made (a folder, a listener, a started session)
        try:
            self._dir = make_tempdir("plugbay-mux-")
        except OSError as exc:
            if exc.errno not in _FOLDER_ERRORS:
                raise
            raise ConfigError(f"cannot make the multiplexed connection's private folder ({exc});"
                              " point TMPDIR at a writable folder") from None
        try:
            path = os.path.join(self._dir, "main.sock")
            try:
                self._listener = sockets.open_listener("unix", path)
            except OSError as exc:
                if exc.errno is not None and exc.errno not in _FOLDER_ERRORS:
                    raise  # out of descriptors, of memory: not the folder's fault
                raise ConfigError(f"cannot listen on {path} for the multiplexed connection ({exc});"
                                  " point TMPDIR at a short, writable folder") from None
            try:
                os.chmod(path, 0o600)
                self._listener.settimeout(POLL)
                self.local_address = ("unix", path)
                self._attach(self._first_dial())
                self._acceptor = threading.Thread(target=self._accept, name="plugbay-mux-main", daemon=True)
                self._acceptor.start()
            except BaseException:
                self._listener.close()
                raise
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        with self._ready:
            self._closed = True
            session = self._session
        if session is not None:
            session.close()
        if self._held is not None:
            self._held.clear()
        shutil.rmtree(self._dir, ignore_errors=True)
        self._workers.close()

    def _first_dial(self) -> Session:
        network, address = self._target
        address = handle_path(address) if network == "unix" else address  # the socket's path, not the host's handle
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
        if self._check is not None:
            try:
                self._check(conn)
            except BaseException:
                conn.close()
                raise
        conn.settimeout(None)
        return Session(conn, client=True, on_stream=self._on_stream, name="mux-host", start=False,
                       write_timeout=self._keepalive.write_timeout)

    @property
    def refusal(self) -> str | None:
        """Why the plugin's network front refused this host's session (a cap of its reached:
        plugbay.core.transport.yrefuse), from the refusal until a session is accepted; else None."""
        with self._lock:
            session = self._session
            if session is not None and session.closed and refused(session.close_reason):
                self._refusal = session.close_reason
            elif session is not None and session.answered:
                self._refusal = None
            return self._refusal

    def open_stream(self, timeout: float = SESSION_WAIT, on: Session | None = None) -> Stream:
        # A forwarded port (kubectl port-forward, a proxy) may accept and then drop the
        # connection; the plugin takes a new one once the old one is gone, so dial again
        # (never for a knocked stream: its knock is lost with the old connection).
        if on is None:
            with self._redial_lock:
                self._redial_if_lost()
        return super().open_stream(timeout, on)

    def wait_session(self, timeout: float = SESSION_WAIT) -> None:
        """Until a session is up (dialing again if it was lost), or ``timeout``: open_stream then opens at once."""
        with self._redial_lock:
            self._redial_if_lost()
        with self._ready:
            self._ready.wait_for(lambda: self._closed or (self._session is not None and not self._session.closed),
                                 timeout)

    def _redial_if_lost(self) -> None:
        with self._lock:
            session = self._session
            if session is not None and session.closed and session.answered:
                self._redials = 0  # a yamux peer answered on it: a working connection was lost, not a flapping one
            redial = (not self._closed and session is not None and session.closed
                      and (self._max_redials is None or self._redials < self._max_redials))
            if redial:
                self._redials += 1
        if redial:
            assert session is not None
            # a plugin that broke the protocol (or went away with an error) is worth telling; a
            # forward that dropped the connection is routine
            level = logging.WARNING if failed_by_peer(session.close_reason) else logging.DEBUG
            log.log(level, "multiplexed connection lost (%s); dialing the plugin again", session.close_reason)
            try:
                self._attach(self._dial())
            except OSError as exc:
                raise BrokerClosedError(f"the multiplexed connection to the plugin was lost"
                                        f" ({session.close_reason}) and cannot be made again: {exc}") from exc

    def _accept(self) -> None:
        def closed() -> bool:
            if self._held is not None:
                self._held.expire()  # this loop's poll is the held streams' clock, and the keepalive's
            try:
                self._keepalive.tick(self._session, time.monotonic())
            except Exception:  # never the end of this loop: it accepts the main channel's connections
                log.exception("multiplexed connection: the keepalive check failed")
            return self._closed

        for conn in sockets.accept_each(self._listener, closed):
            if self._closed:  # close()'s wake-up call, or a dial as it closed: nothing to carry it
                conn.close()
                continue
            # opening its stream may wait (a writer stuck on a full socket holds the send lock):
            # a worker waits, never this loop, which must keep the keepalive ticking
            try:
                self.spawn(lambda conn=conn: self._connect(conn))  # type: ignore[misc]
            except PlugbayError:
                conn.close()

    def _connect(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(None)
            # never between a brokered dial's knock and its stream: the plugin routes its next
            # stream by that knock, and this one (a main-channel connection) would reach the
            # brokered server, and the dial's the main one (go-plugin's host has that race)
            self.wait_session()  # redial or wait for the session first: dials must not queue behind that
            with self.dial_lock:
                stream = self.open_stream(timeout=0.0)  # not up by now: fail, do not wait again under the lock
            self.connect_local(conn, stream)
        except (PlugbayError, OSError):
            conn.close()

    def _close_extra(self) -> None:
        # a connection of its own wakes the acceptor's accept() now, not at its next poll (every close
        # of a network client's endpoint waited up to POLL for it); the acceptor drops it, closed
        try:
            waker = sockets.dial_now(*self.local_address)
        except OSError:
            waker = None
        self._acceptor.join(timeout=5)
        if waker is not None:
            waker.close()
        if self._held is not None:
            self._held.clear()
        self._listener.close()
        shutil.rmtree(self._dir, ignore_errors=True)
