"""A local unix listener whose connections ride streams of a multiplexed session (the broker's dialer).

A brokered channel over the multiplexed connection is a plain gRPC channel to
a private unix socket; each connection gRPC makes there is carried by one
knocked yamux stream.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from plugbay.core.transport import sockets
from plugbay.core.transport.muxsession import POLL, MuxSession
from plugbay.core.transport.yamux import Stream
from plugbay.errors import BrokerClosedError, PlugbayError

log = logging.getLogger("plugbay.mux")


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
        self._listener.settimeout(POLL)
        self._path = path
        self._mux = mux
        self._cond = threading.Condition()
        self._first = [first] if first is not None else []
        self._pending = first is None  # the first connection waits for set_first()
        self._next = next_stream
        self._stop = threading.Event()
        self._done = threading.Event()
        self.name = name

    def start(self) -> None:
        self._mux.spawn(self._accept)

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
        return self._stop.is_set() or self._mux.closed

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
            woken = self._stop.is_set()
            self._stop.set()
            first, self._first = self._first, []
            self._cond.notify_all()
        for stream in first:
            stream.reset()
        if not woken:
            self._wake()

    def _wake(self) -> None:
        # A connection of its own wakes the accept loop now, not at its next poll: a plugin's
        # close() joined each bridge in turn, and waited up to POLL for each (its host kills it
        # 2 s after Shutdown). The loop drops it, stopped. Not a shutdown() of the listener: the
        # loop closes it, and a shutdown racing that close could hit a reused fd number.
        try:
            waker = sockets.dial_now("unix", self._path)
        except OSError:  # the loop ended already: its listener is closed or gone
            return
        if waker is not None:
            waker.close()
