"""Moving a relayed connection's bytes (plugbay.core.transport.relayconn): the pump and its drain bound.

RelayConn inherits it once both sides are connected and the TLS handshake is
done. Bytes go both ways through two bounded buffers (``CAP`` each), a side
not read while the buffer towards the other is full (backpressure).

A wake-up must be cheap: each unary gRPC call crosses the relay twice, and
the loop thread holds the GIL the gRPC threads wait for. While nothing is
queued, ended or waited for either way (``_steady``), a readable side's bytes
go straight to the other socket in a few calls (:meth:`Pumping._plain_readable`,
:meth:`Pumping._tls_readable`); everything else goes through :meth:`Pumping._pump`.
"""

from __future__ import annotations

import fcntl
import logging
import socket
import ssl
import struct
import termios
from typing import Protocol

from plugbay.core.transport.ioloop import READ, WRITE, Timer
from plugbay.core.transport.relaydial import Dialing, DialSetup
from plugbay.core.transport.sockets import hung_up

_log = logging.getLogger("plugbay.relay")

CHUNK = 64 * 1024
CAP = 1024 * 1024  # per-direction buffer; reads pause past it (backpressure)
# TLS's largest record (plaintext bytes). A read returns at most the decrypted records OpenSSL holds;
# one shorter than this (and than CHUNK) left none behind, so no pending() is asked after it (that call
# releases and takes back the GIL). After a full one the next record is usually in the socket already
# (a large message): it is read at once and the records go on in one plaintext write.
RECORD = 16 * 1024
# A read this long may have left decrypted bytes in OpenSSL, which epoll cannot see: read on after it.
# With CHUNK >= RECORD (as set here) OpenSSL holds nothing after any read, and reading on only saves a
# wake-up; were CHUNK smaller, a read of CHUNK bytes could leave the rest of its record behind.
FULL_READ = min(RECORD, CHUNK)
_OUTQ = getattr(termios, "TIOCOUTQ", None)  # SIOCOUTQ on sockets


class PumpSetup(DialSetup, Protocol):
    """What pumping needs of its relay's Setup beyond dialing (plugbay.core.transport.relayconn)."""

    drain_timeout: float


class Pumping(Dialing):
    """The pump step of a RelayConn; its state is set up in RelayConn.__init__."""

    s: PumpSetup
    _timer: Timer | None
    to_tls: bytearray
    to_plain: bytearray
    _chunk: bytes
    _plain_eof: bool
    _tls_eof: bool
    _read_wants_write: bool
    _write_wants_read: bool
    _ticket_wanted: bool
    _steady: bool
    _held: bool
    delivered: int
    _last: tuple[int, int, int]

    def _plain_readable(self) -> None:
        """Steady, the plaintext side readable: its bytes are encrypted and written at once.

        The common wake-up of a unary call, kept short (the loop holds the GIL
        the gRPC threads wait for); anything else goes through :meth:`_pump`.
        """
        tls, plain = self.tls, self.plain
        assert tls is not None and plain is not None
        try:
            data = plain.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        if data:
            try:
                sent = tls.send(data)
                self.delivered += sent
                if sent == len(data):
                    return
                data = data[sent:]
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                pass  # written again by the pump, with the same bytes
            self._chunk = data
        else:
            self._plain_eof = True
        self._steady = False
        self._pump(0, 0)

    def _tls_readable(self) -> None:
        """Steady, the TLS side readable: a short record is decrypted and sent on at once (see _plain_readable)."""
        tls, plain = self.tls, self.plain
        assert tls is not None and plain is not None
        try:
            data = tls.recv(CHUNK)
        except ssl.SSLWantReadError:
            return  # part of a record: the rest wakes us again
        except ssl.SSLWantWriteError:
            self._read_wants_write = True
            data = None
        if data and len(data) < FULL_READ:
            try:
                sent = plain.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            self.delivered += sent
            if sent == len(data):
                return
            self.to_plain += memoryview(data)[sent:]
        elif data:
            self.to_plain += data  # a full record: the pump reads the next ones, for one write
            self._held = True
        elif data is not None:
            self._tls_eof = True
        self._steady = False
        self._pump(0, 0)

    def _pump(self, tls_fired: int, plain_fired: int) -> None:
        """Move what can move without waiting, then watch for what is still wanted.

        A wake-up must be cheap (each unary gRPC call crosses twice, and the
        loop holds the GIL the gRPC threads wait for): only the side that is
        ready is read, and what it gave goes straight to the other socket when
        nothing is queued before it (no copy through the buffers). TLS is read
        on after a full record (see RECORD: the next one is likely in the
        socket already), the records coalesced into one plaintext write.

        One pass per wake-up, at most about CAP bytes read: the shared loop
        runs every relay, broker stream and timer, and a bulk transfer that
        kept reading while the plain socket took bytes held it for tens of
        milliseconds. Stopping is safe: the watching is level-triggered and
        OpenSSL holds nothing decrypted (see FULL_READ), so what is left
        wakes the loop again; ``_held`` makes the next wake-up read on.
        """
        tls, plain = self.tls, self.plain
        assert tls is not None and plain is not None
        to_tls, to_plain = self.to_tls, self.to_plain
        if plain_fired & READ and not self._plain_eof and len(to_tls) < CAP:
            try:
                data = plain.recv(CHUNK)
                if not data:
                    self._plain_eof = True
                elif to_tls or self._chunk:
                    to_tls += data
                else:
                    self._chunk = data  # at most CHUNK: written as it is below
            except (BlockingIOError, InterruptedError):
                pass
        if not self._tls_eof and len(to_plain) < CAP and (
                tls_fired & READ or self._held or (self._read_wants_write and tls_fired & WRITE)):
            self._read_wants_write = self._held = False
            try:
                self._read_tls(tls, plain, to_plain)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLWantWriteError:
                self._read_wants_write = True
        if to_plain:
            try:
                sent = plain.send(to_plain)
                del to_plain[:sent]
                self.delivered += sent
            except (BlockingIOError, InterruptedError):
                pass
        if self._chunk or to_tls:
            self._write_wants_read = False
            try:
                while True:
                    chunk = self._chunk
                    if not chunk:
                        if not to_tls:
                            break
                        chunk = self._chunk = bytes(to_tls[:CHUNK])
                        del to_tls[:CHUNK]
                    sent = tls.send(chunk)  # the same bytes again after a want-error (OpenSSL's rule)
                    self._chunk = chunk[sent:] if sent < len(chunk) else b""
                    self.delivered += sent
            except ssl.SSLWantWriteError:
                pass
            except ssl.SSLWantReadError:
                self._write_wants_read = True
        assert self._treg is not None and self._preg is not None
        if not (to_tls or self._chunk or to_plain or self._plain_eof or self._tls_eof or self._write_wants_read
                or self._read_wants_write):
            # everything delivered, nothing ended: read both sides (what the general case below gives then)
            self._preg.want(READ)
            self._treg.want(READ)
            self._steady = not (self._held or self._ticket_wanted)
            return
        self._steady = False
        if (self._plain_eof and not to_tls and not self._chunk and not to_plain) or (self._tls_eof and not to_plain):
            self.close()
            return
        if self._timer is None and (to_tls or self._chunk or to_plain):
            self._last = self._progress()
            self._timer = self.s.loop.call_later(self.s.drain_timeout, lambda: self._guard(self._drain_check))
        self._preg.want((READ if not self._plain_eof and len(to_tls) < CAP else 0) | (WRITE if to_plain else 0))
        self._treg.want((READ if (not self._tls_eof and len(to_plain) < CAP) or self._write_wants_read else 0)
                        | (WRITE if ((to_tls or self._chunk) and not self._write_wants_read)
                           or self._read_wants_write else 0))

    def _read_tls(self, tls: ssl.SSLSocket, plain: socket.socket, to_plain: bytearray) -> None:
        """Read TLS records after full ones while there is room (raises OpenSSL's want-errors).

        A short record with nothing queued before it (a unary call's usual
        message) is sent on at once; full ones and what follows them are
        gathered into ``to_plain`` for one write. Stopped by the buffer's cap
        after a full record, ``_held`` says to read on once there is room.
        """
        while True:
            data = tls.recv(CHUNK)
            if not data:
                self._tls_eof = True
                return
            if self._ticket_wanted:  # TLS 1.3: the peer's ticket came before its data
                self._ticket_wanted = False
                self.s.resumption.keep(tls)
            more = len(data) >= FULL_READ
            if not more and not to_plain:
                try:
                    sent = plain.send(data)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                self.delivered += sent
                if sent < len(data):
                    to_plain += memoryview(data)[sent:]
                return
            to_plain += data
            if not more:
                return  # nothing left decrypted; epoll says when the next record arrives
            if len(to_plain) >= CAP:
                self._held = True
                return

    def _drain_check(self) -> None:
        """Bytes were waiting ``drain_timeout`` ago: close if none moved since and a side has ended."""
        self._timer = None
        if not (self.to_tls or self._chunk or self.to_plain):
            return  # the next pump with bytes waiting checks again
        now, last = self._progress(), self._last
        # moved: handed to a socket, or taken from a socket's send queue by its peer (a slow
        # reader behind megabytes of socket buffers frees no room for a while, but takes bytes)
        moved = now[0] > last[0] or now[1] < last[1] or now[2] < last[2]
        if not moved and (self._plain_eof or self._tls_eof or hung_up(self.plain) or hung_up(self.tls)):
            _log.debug("relay connection: a side has ended and no byte moved in %gs; closing it",
                       self.s.drain_timeout)
            self.close()
            return
        self._last = now
        self._timer = self.s.loop.call_later(self.s.drain_timeout, lambda: self._guard(self._drain_check))

    def _progress(self) -> tuple[int, int, int]:
        """(bytes handed to the sockets, the TLS and the plain socket's unsent or unacknowledged bytes)."""
        return self.delivered, _unsent(self.tls), _unsent(self.plain)


def _unsent(sock: socket.socket | None) -> int:
    """Bytes in the socket's send queue its peer has not acknowledged (Linux; 0 where unknown)."""
    if sock is None or _OUTQ is None:
        return 0
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0"))[0])
    except OSError:
        return 0
