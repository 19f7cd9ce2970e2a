"""A local 127.0.0.1 listener that port-forwards each connection to a pod through the API server.

Each accepted connection opens its own port-forward WebSocket (the
v4.channel.k8s.io protocol: a data and an error channel per port, each opened
by a frame carrying the port number) and one thread relays bytes both ways
between the connection and the WebSocket's socket, framing them itself
(wsframes.py). A dropped stream breaks only the connection on it, and gRPC's
next connection gets a fresh one. The WebSocket's handshake is plugbay's own
(wsupgrade.py: the kubernetes client Configuration's auth, TLS and proxy
settings under one deadline), since the kubernetes client's ``stream`` gives
the upgrade no timeout and an API server that never answers would hang start.

The kubelet dials the pod's port as each stream opens and, when that fails (nothing
listens there), writes why on the port's error channel and ends the stream. The
forwarder keeps the last such text (``last_error``): a start whose first
connection was refused fails with it at once (core/host/connect.wait_healthy asks
the runner's connect_detail()), not at its timeout with gRPC's "Socket closed".
The constructor's probe does not wait for it: a port that answers sends nothing,
so every forwarder would pay that wait.
"""

from __future__ import annotations

import logging
import select
import selectors
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

from plugbay.errors import PermissionDeniedError, PlugbayError, RunnerError, printable
from plugbay.core.transport.sockets import shutdown_and_join
from plugbay.runners.kubernetes.wsframes import (
    OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, FrameError, FrameReader, MaskKeys, client_frame,
)
from plugbay.runners.kubernetes.wsupgrade import open_websocket, said

V4_PROTOCOL = "v4.channel.k8s.io"

_log = logging.getLogger("plugbay.runners.kubernetes")


class PortForwarder:
    """``timeout``: seconds each stream's connect, TLS and WebSocket upgrade may take together;
    ``probe_timeout``: the constructor's own stream's (default ``timeout``), which the runner bounds by
    what is left of the Client's start when the start opens it (the later streams come after the start).

    ``gone()`` says whether the runner's pod is gone (its watch saw it deleted, or its name taken by a
    pod of another UID): the API server forwards to whichever pod has the name, so from then on no
    connection gets a stream (a new pod under that name is not the plugin the host started)."""

    def __init__(self, configuration: Any, namespace: str, pod: str, port: int,
                 denied_message: str, timeout: float = 30.0, gone: Callable[[], bool] = lambda: False,
                 probe_timeout: float | None = None) -> None:
        self._configuration = configuration
        self._gone = gone
        self.namespace, self.pod, self.port = namespace, pod, port
        self.timeout = timeout
        self._denied_message = denied_message
        self._path = (f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(pod, safe='')}"
                      f"/portforward?ports={port}")
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._socks: set[Any] = set()
        self._opening: set[socket.socket] = set()  # streams' sockets still in their upgrade
        self._remotes: set[Any] = set()  # each connection's WebSocket to the API server (plain or TLS)
        self._threads: list[threading.Thread] = []
        self._count = 0
        self.last_error = ""  # the error channel's last text, escaped and clipped (wsupgrade.said)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        try:
            # fail now (403, pod gone) rather than on the first call
            _close_stream(self._open(probe_timeout), FrameReader())
        except BaseException:
            self._listener.close()
            raise
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"plugbay-kpf-{pod}-{port}",
                                          daemon=True)
        self._acceptor.start()

    def error_detail(self) -> str:
        """The last error the API server sent for this port, for a failed start's message; "" if none."""
        error = self.last_error
        # said() escaped and clipped it as it came: quoted as it is (a repr would escape the escapes again)
        return (f"port-forward to pod {self.namespace}/{self.pod} port {self.port}: the API server said"
                f" '{printable(error.strip())}'") if error else ""

    def _open(self, timeout: float | None = None) -> Any:
        """One port-forward WebSocket, within ``timeout`` (None: :attr:`timeout`); returns its socket (plain
        or TLS), past the handshake."""
        what = f"port-forward to pod {self.namespace}/{self.pod} port {self.port}"
        if self._gone():
            raise RunnerError(f"{what}: the runner's pod is gone (deleted, or its name is another pod's now);"
                              " plugbay forwards no connection to a pod it did not start")
        mine: list[socket.socket] = []

        def track(sock: socket.socket) -> None:  # close() shuts these down: no upgrade outlives it
            with self._lock:
                if self._closed.is_set():
                    raise RunnerError(f"{what}: the port-forward was closed while this stream opened")
                self._opening.add(sock)
                mine.append(sock)

        try:
            sock, chosen = open_websocket(self._configuration, self._path, (V4_PROTOCOL,),
                                          self.timeout if timeout is None else timeout, what, self._refused, track)
        finally:
            with self._lock:
                self._opening.difference_update(mine)
        if chosen != V4_PROTOCOL:  # our framing: v4's port prefix on each channel's first frame
            sock.close()
            raise RunnerError(
                f"port-forward to pod {self.namespace}/{self.pod}: the API server chose WebSocket"
                f" subprotocol {chosen!r}; plugbay speaks {V4_PROTOCOL}. Use a kube-apiserver that"
                " offers it (every release since 1.4 does for port-forward) or the pod-IP transport.")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _refused(self, status: int, reason: str, message: str) -> PlugbayError:
        if status == 403:
            return PermissionDeniedError(self._denied_message + f" (server said: {message})")
        if status == 401:
            return PermissionDeniedError(
                "the Kubernetes API rejected the host's credentials (401) on create pods/portforward;"
                " refresh the kubeconfig's token or certificate")
        return RunnerError(
            f"port-forward to pod {self.namespace}/{self.pod} port {self.port} failed: {status} {reason}:"
            f" {message}. Check that the pod is Running (kubectl get pod) and listens on that port.")

    def _accept_loop(self) -> None:
        with _readable(self._listener) as wait:
            while not self._closed.is_set():
                try:
                    if not wait(0.2):
                        continue
                    conn, _ = self._listener.accept()
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except (OSError, ValueError):  # closed under the wait
                    return
                self._count += 1
                t = threading.Thread(target=self._serve, args=(conn,),
                                     name=f"plugbay-kpf-conn-{self.pod}-{self._count}", daemon=True)
                with self._lock:
                    if self._closed.is_set():
                        conn.close()
                        return
                    self._threads = [x for x in self._threads if x.is_alive()]
                    self._threads.append(t)
                    self._socks.add(conn)
                t.start()

    def _serve(self, conn: socket.socket) -> None:
        remote: Any = None
        reader = FrameReader()
        try:
            try:
                remote = self._open()
            except Exception as exc:  # after close() this is close() ending the upgrade: no warning then
                (_log.debug if self._closed.is_set() else _log.warning)(
                    "port-forward to %s/%s:%s failed: %s", self.namespace, self.pod, self.port, exc)
                return
            with self._lock:  # close() shuts it down too: a send the API server does not take must end
                if self._closed.is_set():
                    return
                if self._gone():  # it went while the stream opened: the stream may be another pod's
                    _log.warning("port-forward to %s/%s:%s: the runner's pod is gone; closing the connection",
                                 self.namespace, self.pod, self.port)
                    return
                self._remotes.add(remote)
            error = said(self._relay(conn, remote, reader))  # the API server's text
            if error:
                self.last_error = error
                _log.warning("port-forward to %s/%s:%s: %s", self.namespace, self.pod, self.port, error)
        except (OSError, FrameError) as exc:
            _log.debug("port-forward to %s/%s:%s ended: %s", self.namespace, self.pod, self.port, exc)
        finally:
            with self._lock:
                self._socks.discard(conn)
                self._remotes.discard(remote)
            conn.close()
            if remote is not None:
                _close_stream(remote, reader)

    def _relay(self, conn: socket.socket, remote: Any, reader: FrameReader) -> str:
        """Relay until either side ends (gRPC reconnects through a new stream); the error channel's text."""
        channels = _Channels(self.port)
        error = ""
        tls = isinstance(remote, ssl.SSLSocket)
        masks = MaskKeys()
        local = conn.fileno()
        # one poll object for the stream's life, not a selector: its per-wait key bookkeeping cost ~13 us
        # per round trip through the forwarder (echo through the stand-in), a unary call having one
        poller = select.poll()
        poller.register(local, select.POLLIN)
        poller.register(remote.fileno(), select.POLLIN)
        closed = self._closed.is_set
        while not closed():
            for fd, _ in poller.poll(500):
                if fd == local:
                    data = conn.recv(65536)
                    if not data:
                        return error
                    remote.sendall(client_frame(OP_BINARY, b"\x00" + data, masks.take()))
                    continue
                data = remote.recv(65536)
                while tls and remote.pending():
                    data += remote.recv(remote.pending())
                if not data:
                    return error
                out: list[bytes] = []  # the data frames of this read, sent to gRPC with one sendall
                try:
                    for opcode, payload in reader.feed(data):
                        if opcode == OP_CLOSE:
                            return error
                        if opcode == OP_PING:
                            remote.sendall(client_frame(OP_PONG, payload, masks.take()))
                        if opcode != OP_BINARY or not payload:
                            continue
                        channel, body = channels.split(payload)
                        if channel == 1:
                            error += body.decode(errors="replace")
                            if error:
                                return error  # the server ends the stream after its error
                        elif body:
                            out.append(body)
                finally:
                    if out:  # what came before a Close, an error or a bad frame is still delivered
                        conn.sendall(out[0] if len(out) == 1 else b"".join(out))
        return error

    def close(self) -> None:
        self._closed.set()
        self._acceptor.join(timeout=5)
        self._listener.close()
        with self._lock:
            socks, threads = list(self._socks), list(self._threads)
            remotes = list(self._remotes) + list(self._opening)
        for remote in remotes:  # the raw socket's shutdown: SSLSocket.shutdown would drop TLS under a sender
            try:
                socket.socket.shutdown(remote, socket.SHUT_RDWR)
            except OSError:
                pass
        shutdown_and_join(socks, threads)


class _Channels:
    """One port's two v4 channels, data (0) and error (1): each one's first frame starts with the port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.opened = [False, False]

    def split(self, payload: bytes) -> tuple[int, bytes]:
        """A binary frame's channel and body (the port prefix taken off)."""
        channel, body = payload[0], payload[1:]
        if channel > 1:
            raise FrameError(f"a frame on channel {channel}; one port has channels 0 and 1")
        if not self.opened[channel]:
            self.opened[channel] = True
            if len(body) < 2 or struct.unpack_from("<H", body)[0] != self.port:
                raise FrameError(f"channel {channel} opened without port {self.port}")
            body = body[2:]
        return channel, body


def _close_stream(sock: Any, reader: FrameReader, wait: float = 1.0) -> None:
    """Send Close and read until the server's Close or EOF (RFC 6455 7.1.1), so neither side sees a reset;
    all within ``wait``."""
    deadline = time.monotonic() + wait
    try:
        # blocking, an API server that stopped reading (its buffers full) held this thread on the
        # Close frame for good: close() does not shut a stream its relay has let go
        sock.settimeout(wait)
        sock.sendall(client_frame(OP_CLOSE, struct.pack("!H", 1000)))
        with _readable(sock) as readable:
            while (left := deadline - time.monotonic()) > 0:
                data = sock.recv(65536) if readable(left) else b""
                if not data or any(op == OP_CLOSE for op, _ in reader.feed(data)):
                    break
    except (OSError, ValueError, FrameError):
        pass
    finally:
        sock.close()


@contextmanager
def _readable(*socks: Any) -> Iterator[Callable[[float], list[Any]]]:
    """``wait(timeout)``: which of ``socks`` are readable. A selector, not select.select(): that refuses
    descriptors of 1024 and up (ValueError), which a host with many connections or plugins hands out."""
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        yield lambda timeout: [key.fileobj for key, _ in selector.select(timeout)]
