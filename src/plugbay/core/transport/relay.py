"""A TLS relay: OpenSSL (Python's ssl) on one side of a socket pair, plaintext on the other.

grpcio's BoringSSL cannot handshake with go-plugin's P-521 AutoMTLS
certificates. Where a Go peer is on the other end, plugbay keeps gRPC in
plaintext on a private unix socket and lets this relay speak TLS to the peer:

* ``originate`` (host side): the gRPC channel dials the relay's private socket;
  the relay dials the plugin and runs the TLS client handshake.
* ``terminate`` (plugin side): the relay listens on the address the plugin
  announces, runs the TLS server handshake, and forwards to the gRPC server's
  private socket.

One thread accepts; each connection gets one thread that moves bytes both
ways through a poll loop, so an SSL object is never used from two threads.
The TLS handshake has :data:`HANDSHAKE_TIMEOUT` (plugbay.core.transport.sockets) seconds in total (not per
read: a peer trickling bytes is cut off too); in ``terminate`` mode nothing is
dialed for a peer before its handshake completed.

For network mode the context may be a provider (called per handshake, so
rotated files apply to new connections) and, terminating, the target may be a
*router*: it sees the first plaintext bytes the peer sent after the handshake
(within ``first_bytes_timeout``) and names where the connection goes (None:
drop it). Those bytes are then delivered there first.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Literal, Union

from plugbay.core.transport.sockets import (ACCEPT_POLL, HANDSHAKE_TIMEOUT, accept_each, close_listener, dial,
                                             listener_address, shutdown_and_join)

_CHUNK = 64 * 1024
_CAP = 1024 * 1024  # per-direction buffer; reads pause past it (backpressure)
_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR  # a recv then returns data, EOF or the error
_IDLE_MS = 500  # an idle pump wakes this often to notice close()

Target = Union[tuple[str, str], Callable[[bytes], Union[tuple[str, str], None]]]
ContextSource = Union[ssl.SSLContext, Callable[[], ssl.SSLContext]]


class TLSRelay:
    """Copies bytes between plaintext and TLS connections until closed."""

    def __init__(self, listener: socket.socket, target: Target, context: ContextSource,
                 mode: Literal["originate", "terminate"], server_hostname: str = "localhost",
                 handshake_timeout: float = HANDSHAKE_TIMEOUT, first_bytes_timeout: float = 5.0) -> None:
        if callable(target) and mode != "terminate":
            raise ValueError("a routing target needs mode='terminate'")
        self._listener = listener
        self._target = target
        self._ctx = context
        self._mode = mode
        self._hostname = server_hostname
        self._hs_timeout = handshake_timeout
        self._first_timeout = first_bytes_timeout
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._acceptor = threading.Thread(target=self._accept_loop, name="plugbay-tlsrelay-accept",
                                          daemon=True)
        listener.settimeout(ACCEPT_POLL)
        self._acceptor.start()

    @property
    def address(self) -> tuple[str, str]:
        return listener_address(self._listener)

    def close(self) -> None:
        """Stop accepting, drop every connection and join every thread."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._acceptor.join(timeout=5)
        close_listener(self._listener)
        with self._lock:
            conns = list(self._conns)
            threads = list(self._threads)
        shutdown_and_join(conns, threads)

    def _accept_loop(self) -> None:
        for conn in accept_each(self._listener, self._closed.is_set):
            thread = threading.Thread(target=self._serve, args=(conn,), name="plugbay-tlsrelay-conn",
                                      daemon=True)
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _context(self) -> ssl.SSLContext:
        return self._ctx() if callable(self._ctx) else self._ctx

    def _serve(self, accepted: socket.socket) -> None:
        tls: ssl.SSLSocket | None = None
        plain: socket.socket | None = None
        first = b""
        try:
            deadline = time.monotonic() + self._hs_timeout
            if self._mode == "terminate":
                tls = self._context().wrap_socket(accepted, server_side=True, do_handshake_on_connect=False)
                with self._lock:
                    self._conns.add(tls)
                _handshake(tls, deadline, self._closed)  # the peer proves itself before we dial
                target = self._target
                if callable(target):
                    tls.settimeout(self._first_timeout)
                    first = tls.recv(_CHUNK)
                    chosen = target(first) if first else None
                    if chosen is None:
                        return
                    target = chosen
                plain = dial(*target, timeout=self._hs_timeout)
            else:
                assert not callable(self._target)
                plain = accepted
                tls = self._context().wrap_socket(dial(*self._target, timeout=self._hs_timeout),
                                            server_hostname=self._hostname, do_handshake_on_connect=False)
                with self._lock:
                    self._conns.add(tls)
                _handshake(tls, deadline, self._closed)
            with self._lock:
                self._conns.add(plain)
            _pump(plain, tls, self._closed, first)
        except (OSError, ssl.SSLError):
            pass  # a failed peer handshake is the peer's problem; gRPC reports it on its side
        finally:
            for sock in (tls, plain, accepted):
                if sock is not None:
                    try:
                        sock.close()
                    except OSError:
                        pass
            with self._lock:
                self._conns.discard(accepted)
                if tls is not None:
                    self._conns.discard(tls)
                if plain is not None:
                    self._conns.discard(plain)
                self._threads.discard(threading.current_thread())


def _handshake(tls: ssl.SSLSocket, deadline: float, closed: threading.Event) -> None:
    """Complete the TLS handshake by ``deadline`` (TimeoutError otherwise), polling so close() is noticed."""
    tls.setblocking(False)
    poller = select.poll()
    while True:
        try:
            tls.do_handshake()
            return
        except ssl.SSLWantReadError:
            want = select.POLLIN
        except ssl.SSLWantWriteError:
            want = select.POLLOUT
        remaining = deadline - time.monotonic()
        if remaining <= 0 or closed.is_set():
            raise TimeoutError("the peer did not complete the TLS handshake in time")
        poller.register(tls.fileno(), want)
        poller.poll(min(remaining, ACCEPT_POLL) * 1000)


def _pump(plain: socket.socket, tls: ssl.SSLSocket, closed: threading.Event, first: bytes = b"") -> None:
    """Move bytes both ways until a side ends, the relay closes, or a socket fails.

    Each unary gRPC call crosses this loop twice (request, answer) and a Go peer
    adds a ping round, so a wake-up must be cheap: one poll(), each ready side
    read and written straight on, and TLS read record by record only while
    OpenSSL holds decrypted bytes (``pending()``), never into a read that can
    only fail with WANT_READ (a syscall and an exception per hop).
    """
    plain.setblocking(False)
    tls.setblocking(False)
    to_tls = bytearray()
    to_plain = bytearray(first)
    tls_chunk = b""  # an SSL write that must be retried with the same bytes
    plain_eof = tls_eof = False
    poller = select.poll()
    pfd, tfd = plain.fileno(), tls.fileno()
    registered = (-1, -1)
    pollin, pollout = select.POLLIN, select.POLLOUT
    while not closed.is_set():
        if (plain_eof and not to_plain and not to_tls and not tls_chunk) or \
                (tls_eof and not to_plain):
            return
        want_plain = (pollin if not plain_eof and len(to_tls) < _CAP else 0) | (pollout if to_plain else 0)
        want_tls = (pollin if not tls_eof and len(to_plain) < _CAP else 0) | \
            (pollout if to_tls or tls_chunk else 0)
        if registered != (want_plain, want_tls):
            poller.register(pfd, want_plain)
            poller.register(tfd, want_tls)
            registered = (want_plain, want_tls)
        buffered = want_tls & pollin and tls.pending() > 0
        # Read only what poll reports ready: a recv on an idle socket costs a syscall and an exception.
        plain_ready = tls_ready = 0
        for fd, event in poller.poll(0 if buffered else _IDLE_MS):
            if event & select.POLLNVAL:
                return  # a socket was closed under us (close())
            if fd == pfd:
                plain_ready = event
            else:
                tls_ready = event
        if want_plain & pollin and plain_ready & _READABLE:
            try:
                data = plain.recv(_CHUNK)
            except BlockingIOError:
                data = None
            except OSError:
                return
            if data:
                to_tls += data
            elif data is not None:
                plain_eof = True
        if buffered or want_tls & pollin and tls_ready & _READABLE:
            try:
                while len(to_plain) < _CAP:
                    data = tls.recv(_CHUNK)
                    if not data:
                        tls_eof = True
                        break
                    to_plain += data
                    if not tls.pending():
                        break  # the record is drained; poll says when the next one arrives
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except (OSError, ssl.SSLError):
                return
        if to_tls or tls_chunk:
            if not tls_chunk:
                tls_chunk = bytes(to_tls[:_CHUNK])
                del to_tls[:_CHUNK]
            try:
                sent = tls.send(tls_chunk)
                tls_chunk = tls_chunk[sent:]
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except (OSError, ssl.SSLError):
                return
        if to_plain:
            try:
                sent = plain.send(to_plain)
                del to_plain[:sent]
            except BlockingIOError:
                pass
            except OSError:
                return
