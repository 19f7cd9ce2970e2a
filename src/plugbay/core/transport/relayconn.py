"""One relayed connection as a state machine on the shared I/O loop: dial, TLS handshake, then pump.

Every step is a non-blocking call made when the loop says a socket is ready,
so a relayed connection costs no thread and a slow or silent peer holds up
nobody: a dial or handshake that would wait registers interest and returns.
Bytes are moved both ways through two bounded buffers (``CAP`` each): a side
is not read while the buffer towards the other side is full, so a peer that
stops reading stops its sender (backpressure) and memory stays bounded (the
pump: plugbay.core.transport.relaypump).

A side's end of file is passed on once the bytes it sent were delivered
(the connection then closes, as the thread-per-connection relay did). Bytes
must keep moving meanwhile: when one side has ended or half-closed (its end of
file read, or its hang-up seen while it is not read because the buffer is
full) and no byte moved either way for ``drain_timeout`` seconds, the other
side is taken for gone (a partition, a dead host: TCP would say so only
minutes later) and the connection is closed. A peer that holds back while
neither side has ended is never cut off. Any error closes this connection
only. Everything here runs on the loop thread.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Union

from plugbay.core.transport.ioloop import READ, WRITE, IOLoop, Registration, Timer
from plugbay.core.transport.relaydial import Dialing
from plugbay.core.transport.relaypump import CAP, CHUNK, Pumping
from plugbay.core.transport.tlsresume import Resumption

_log = logging.getLogger("plugbay.relay")

__all__ = ["CAP", "CHUNK", "RelayConn", "Setup", "Target"]

# a router sees the first bytes and the connection (its peer's address; on_close to free what it counts;
# preamble to tell the target which connection this is)
_REFUSED = (errno.ECONNREFUSED, errno.ECONNRESET)  # a dial's answer from a host where nothing listens on the port
Target = Union[tuple[str, str], Callable[[bytes, "RelayConn"], Union[tuple[str, str], None]]]


class Setup:
    """What a relay gives each of its connections (one object per relay)."""

    def __init__(self, loop: IOLoop, mode: str, target: Target, context: Callable[[], ssl.SSLContext],
                 hostname: str, handshake_timeout: float, first_bytes_timeout: float,
                 done: Callable[[RelayConn], None], drain_timeout: float) -> None:
        self.loop = loop
        self.mode = mode
        self.target = target
        self.context = context
        self.hostname = hostname
        self.handshake_timeout = handshake_timeout
        self.first_bytes_timeout = first_bytes_timeout
        self.drain_timeout = drain_timeout
        self.done = done
        # terminate: connections accepted and not yet through their TLS handshake, oldest first (the relay caps them)
        self.handshaking: dict[RelayConn, None] = {}
        self.resolvers: set[threading.Thread] = set()  # name lookups in flight (a tcp target by host name)
        self.resumption = Resumption()  # originate: the peer's newest session, for the next dial
        # when (time.monotonic()) the newest refused (or reset) dial to the target began (nothing listened there),
        # None once one connected: what tells a replica gone from a connection only lost (plugbay.network.pinkey),
        # which counts only a refusal from after its call began (a replica restarting on its address is back)
        self.dial_refused_at: float | None = None
        # when the newest dial whose outcome is known began: an older dial's outcome, known later (a host name's
        # look-up, a refusal from afar), must not overwrite a newer one's
        self.dial_outcome_begun = 0.0


class RelayConn(Pumping, Dialing):
    """An accepted connection until both of its sockets are closed."""

    s: Setup  # the whole of it here: Dialing and Pumping are typed with the parts they use

    def __init__(self, setup: Setup) -> None:
        self.s = setup
        self.closed = False
        # when accepted, so when its dial began: a refusal is stamped with it, not with when a busy loop handled it
        # (a pinned call counts only a dial begun after the call did: plugbay.network.pinkey)
        self.begun = time.monotonic()
        self.tls: ssl.SSLSocket | None = None
        self.plain: socket.socket | None = None
        self._raw: socket.socket | None = None  # the dialed socket until it is connected
        self._treg: Registration | None = None  # the TLS side's fd (the raw socket's while dialing)
        self._preg: Registration | None = None
        self._stage = "dial"  # dial -> handshake -> first (a router's first bytes) -> pump
        self._timer: Timer | None = None
        self.to_tls = bytearray()
        self.to_plain = bytearray()
        self._chunk = b""  # an SSL write to retry with the same bytes
        self._plain_eof = self._tls_eof = False
        self._read_wants_write = self._write_wants_read = False
        # pumping with nothing queued, ended or waited for either way: a readable side's bytes go straight on
        self._steady = False
        self._held = False  # a full TLS record was read last: read on when room, without waiting for a wake-up
        self._accepted: socket.socket | None = None
        self._others: list[tuple[str, str]] = []  # a host name's further addresses
        self._ticket_wanted = False  # originate: keep the peer's session once its ticket arrived
        self.delivered = 0  # bytes handed to either socket
        self._last: tuple[int, int, int] = (0, 0, 0)  # _progress() at the last drain check
        self.peer = ""  # the accepted peer's IP address, as the relay accepted it ("" for a unix socket)
        self._closers: list[Callable[[], None]] = []
        self.preamble = b""  # a router's bytes sent ahead of the peer's on the plaintext side (who it is)
        self.bind_name = ""  # a router's abstract unix name for the dialed end (the server sees who it is)

    def on_close(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` (on the loop thread) when this connection closes; at once if it has."""
        if self.closed:
            fn()
        else:
            self._closers.append(fn)

    def start(self, accepted: socket.socket) -> None:
        """Begin with a connection the relay accepted (its handshake deadline starts now)."""
        setup = self.s
        self._accepted = accepted
        self._timer = setup.loop.call_later(setup.handshake_timeout, self._timed_out)
        try:
            accepted.setblocking(False)
            if setup.mode == "terminate":  # the peer proves itself before anything is dialed
                self.tls = setup.context().wrap_socket(accepted, server_side=True, do_handshake_on_connect=False)
                self._treg = setup.loop.add(self.tls.fileno(), self._on_tls, events=READ)
                self._stage = "handshake"
                self._handshake()
            else:
                self.plain = accepted
                assert not callable(setup.target)
                self._dial(setup.target)
        except Exception as exc:
            self._fail(exc)

    # ------------------------------------------------------------ events

    def _on_tls(self) -> None:
        if self.closed:
            return
        assert self._treg is not None
        fired = self._treg.fired
        try:
            if self._steady and fired == READ:
                self._tls_readable()
                return
            if self._stage == "pump":
                self._pump(fired, 0)
            elif self._stage == "handshake":
                self._handshake()
            elif self._stage == "first":
                self._first()
            elif self._raw is not None and self.s.mode == "originate":  # dialing the TLS side
                self._connected()
        except Exception as exc:
            self._fail(exc)

    def _on_plain(self) -> None:
        if self.closed:
            return
        assert self._preg is not None
        try:
            if self._steady and self._preg.fired == READ:
                self._plain_readable()
                return
            if self._stage == "pump":
                self._pump(0, self._preg.fired)
            elif self._raw is not None:  # terminate: dialing the plaintext side
                self._connected()
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self._stage == "dial" and isinstance(exc, OSError) and exc.errno in _REFUSED:
            self.dialed(refused=True)
        if not isinstance(exc, (OSError, ssl.SSLError)):
            _log.exception("relay connection failed; closing it", exc_info=exc)
        # a failed peer (handshake, reset) is the peer's problem; gRPC reports it on its side
        self.close()

    def dialed(self, refused: bool) -> None:
        """Note this connection's dial outcome on the relay, unless a dial begun later has told its own."""
        if self.begun >= self.s.dial_outcome_begun:
            self.s.dial_outcome_begun = self.begun
            self.s.dial_refused_at = self.begun if refused else None

    def _timed_out(self) -> None:
        self._timer = None
        if not self.closed:
            _log.debug("relay connection: no TLS handshake / first bytes in time (%s); closing it", self._stage)
            self.close()

    # ------------------------------------------------------------ TLS

    def _handshake(self) -> None:
        tls, reg = self.tls, self._treg
        assert tls is not None and reg is not None
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            reg.want(READ)
            return
        except ssl.SSLWantWriteError:
            reg.want(WRITE)
            return
        self.s.handshaking.pop(self, None)
        if self.s.mode == "originate":
            self._ticket_wanted = self.s.resumption.handshaken(tls)
            self._start_pump()
        elif callable(self.s.target):
            self._stage = "first"
            self._timer_cancel()
            self._timer = self.s.loop.call_later(self.s.first_bytes_timeout, self._timed_out)
            reg.want(READ)
            if tls.pending():
                self._first()
        else:
            reg.want(0)  # nothing is read from the peer until the plaintext side is connected
            self._stage = "dial"
            self._dial(self.s.target)

    def _first(self) -> None:
        """A router's first bytes: whatever one read returns, as the threaded relay read them."""
        tls = self.tls
        assert tls is not None and callable(self.s.target)
        try:
            first = tls.recv(CHUNK)
        except ssl.SSLWantReadError:
            return
        except ssl.SSLWantWriteError:
            assert self._treg is not None
            self._treg.want(READ | WRITE)
            return
        chosen = self.s.target(first, self) if first else None
        if chosen is None:
            self.close()
            return
        self.to_plain += self.preamble + first
        self._timer_cancel()
        self._timer = self.s.loop.call_later(self.s.handshake_timeout, self._timed_out)  # bounds the dial
        assert self._treg is not None
        self._treg.want(0)  # nothing is read from the peer until the plaintext side is connected
        self._stage = "dial"
        self._dial(chosen)

    # ------------------------------------------------------------ pump

    def _start_pump(self) -> None:
        self._timer_cancel()
        self._stage = "pump"
        assert self.plain is not None and self.tls is not None
        if self._preg is None:
            self._preg = self.s.loop.add(self.plain.fileno(), self._on_plain, events=READ)
        self._pump(READ if self.tls.pending() else 0, WRITE if self.to_plain else 0)

    # ------------------------------------------------------------ close

    def _timer_cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """Drop both sides now (loop thread). Registrations go before their fds are closed."""
        if self.closed:
            return
        self.closed = True
        self._steady = False
        self._timer_cancel()
        for reg in (self._treg, self._preg):
            if reg is not None:
                reg.cancel()
        for sock in (self.tls, self.plain, self._raw, self._accepted):
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
        self.s.handshaking.pop(self, None)
        self.s.done(self)
        closers, self._closers = self._closers, []
        for fn in closers:
            try:
                fn()
            except Exception:
                _log.exception("a relay connection's close hook failed")

