"""Dialing a relayed connection's far side (plugbay.core.transport.relayconn): a non-blocking
connect on the shared I/O loop, a host name looked up off the loop and its addresses tried in turn.

RelayConn inherits it; the connection then goes on to its TLS handshake or its pump.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from plugbay.core.transport.ioloop import WRITE, IOLoop, Registration
from plugbay.core.transport.tlsresume import Resumption

_log = logging.getLogger("plugbay.relay")

_RETRY_DIAL = 0.02  # a unix listener with a full backlog: try again this much later (within the deadline)


class DialSetup(Protocol):
    """What dialing needs of its relay's Setup (plugbay.core.transport.relayconn)."""

    loop: IOLoop
    mode: str
    context: Callable[[], ssl.SSLContext]
    hostname: str
    resolvers: set[threading.Thread]
    resumption: Resumption
    dial_refused_at: float | None
    dial_outcome_begun: float


class Dialing:
    """The dial step of a RelayConn: connect to the target, then hand the socket on (_connected)."""

    # the RelayConn's own state and steps, set and defined there: declared for the type checker
    s: DialSetup
    closed: bool
    tls: ssl.SSLSocket | None
    plain: socket.socket | None
    _raw: socket.socket | None
    _treg: Registration | None
    _preg: Registration | None
    _stage: str
    _others: list[tuple[str, str]]
    bind_name: str

    if TYPE_CHECKING:
        def _on_tls(self) -> None: ...

        def _on_plain(self) -> None: ...

        def _fail(self, exc: BaseException) -> None: ...

        def dialed(self, refused: bool) -> None: ...

        def _handshake(self) -> None: ...

        def _start_pump(self) -> None: ...

        def close(self) -> None: ...

    def _dial(self, target: tuple[str, str]) -> None:
        """Start a non-blocking connect to ``target``; _connected() follows when it is writable."""
        network, address = target
        if network == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                if self.bind_name:  # abstract (Linux): no file to remove, gone with the socket
                    sock.bind("\0" + self.bind_name)
                sock.connect(address)
                err = 0
            except BlockingIOError:  # a full backlog: unix connect does not wait without blocking
                sock.close()
                self.s.loop.call_later(_RETRY_DIAL, lambda: self._guard(lambda: self._dial(target)))
                return
            except OSError:
                sock.close()
                raise
        else:
            host, _, port = address.rpartition(":")
            host = host.strip("[]")
            if not _is_ip(host):
                self._resolve(host, port)
                return
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex((host, int(port)))
            if err not in (0, errno.EINPROGRESS):
                sock.close()
                if self._others:
                    self._dial(self._others.pop(0))
                    return
                raise OSError(err, f"cannot connect to {address}")
        self._raw = sock
        self._register_dialed(sock)
        if err == 0:
            self._connected()

    def _resolve(self, host: str, port: str) -> None:
        """A host name: looked up on a short-lived thread (getaddrinfo blocks), then dialed on the loop."""
        setup = self.s

        def lookup() -> None:
            try:
                found = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
                ips = [str(entry[4][0]) for entry in found]
                addresses = [("tcp", f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}") for ip in ips]
                if not addresses:
                    raise ValueError("no address")

                def dial_found() -> None:
                    self._others = addresses[1:]  # tried in turn when one refuses, as create_connection does
                    self._dial(addresses[0])

                setup.loop.call_soon(lambda: self._guard(dial_found))
            except (OSError, IndexError, ValueError) as exc:
                _log.debug("relay: cannot resolve %s: %s", host, exc)
                setup.loop.call_soon(self.close)
            finally:
                setup.loop.call_soon(lambda: setup.resolvers.discard(thread))

        thread = threading.Thread(target=lookup, name="plugbay-tlsrelay-resolve", daemon=True)
        setup.resolvers.add(thread)
        thread.start()

    def _guard(self, func: Callable[[], None]) -> None:
        if not self.closed:
            try:
                func()
            except Exception as exc:
                self._fail(exc)

    def _register_dialed(self, sock: socket.socket) -> None:
        loop = self.s.loop
        if self.s.mode == "originate":
            self._treg = loop.add(sock.fileno(), self._on_tls, events=WRITE)
        else:
            self._preg = loop.add(sock.fileno(), self._on_plain, events=WRITE)

    def _connected(self) -> None:
        sock = self._raw
        assert sock is not None
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err and self._others:
            self._raw = None
            reg = self._treg if self.s.mode == "originate" else self._preg
            if reg is not None:
                reg.cancel()  # before the fd is closed
            sock.close()
            self._dial(self._others.pop(0))
            return
        if err:
            raise OSError(err, "the relay's dial failed")
        self._raw = None
        self.dialed(refused=False)
        if self.s.mode == "originate":  # the same fd goes on as the TLS socket
            context = self.s.context()
            self.tls = context.wrap_socket(sock, server_hostname=self.s.hostname, do_handshake_on_connect=False,
                                           session=self.s.resumption.offer(context))
            self._stage = "handshake"
            self._handshake()
        else:
            self.plain = sock
            self._start_pump()


def _is_ip(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except OSError:
            pass
    return False
