"""A local 127.0.0.1 listener that port-forwards each connection to a pod through the API server.

Each accepted connection opens its own port-forward WebSocket with the
kubernetes client's ``kubernetes.stream.portforward`` and relays bytes both
ways, so a dropped stream breaks only the connections on it and gRPC's next
connection gets a fresh one. The client's ``portforward`` swaps
``api_client.call_api`` while it runs, so the forwarder owns a private
ApiClient and opens streams one at a time.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from typing import Any

from plugbay.errors import EngineUnavailableError, PermissionDeniedError, RunnerError
from plugbay.core.transport.sockets import shutdown_and_join

_log = logging.getLogger("plugbay.runners.kubernetes")


class PortForwarder:
    def __init__(self, configuration: Any, namespace: str, pod: str, port: int,
                 denied_message: str) -> None:
        from kubernetes import client as client_mod

        client: Any = client_mod
        self._api_client: Any = client.ApiClient(configuration=configuration)
        self._api = client.CoreV1Api(self._api_client)
        self.namespace, self.pod, self.port = namespace, pod, port
        self._denied_message = denied_message
        self._open_lock = threading.Lock()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._socks: set[Any] = set()
        self._threads: list[threading.Thread] = []
        self._count = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        try:
            probe = self._open().socket(port)  # fail now (403, pod gone) rather than on the first call
            _drain_close(probe)
            probe.close()
        except BaseException:
            self._listener.close()
            self._api_client.close()
            raise
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"plugbay-kpf-{pod}-{port}")
        self._acceptor.start()

    def _open(self) -> Any:
        """One port-forward stream; returns the client's PortForward object."""
        from kubernetes.client.exceptions import ApiException
        from kubernetes.stream import portforward

        with self._open_lock:
            try:
                return portforward(self._api.connect_get_namespaced_pod_portforward, self.pod,
                                   self.namespace, ports=str(self.port))
            except ApiException as exc:
                # The WebSocket handshake's HTTP status only survives in the reason text.
                text = f"{exc.status} {exc.reason}"
                if exc.status == 403 or "403" in text:
                    raise PermissionDeniedError(self._denied_message + f" (server said: {exc.reason})") from exc
                if "Connection refused" in text or "timed out" in text:
                    raise EngineUnavailableError(
                        f"cannot reach the Kubernetes API to port-forward to pod {self.namespace}/{self.pod}:"
                        f" {exc.reason}. Check that the API server in the kubeconfig is up.") from exc
                raise RunnerError(
                    f"port-forward to pod {self.namespace}/{self.pod} port {self.port} failed: {exc.reason}."
                    " Check that the pod is Running (kubectl get pod) and listens on that port.") from exc

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                ready, _, _ = select.select([self._listener], [], [], 0.2)
                if not ready:
                    continue
                conn, _ = self._listener.accept()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                return
            self._count += 1
            t = threading.Thread(target=self._serve, args=(conn,),
                                 name=f"plugbay-kpf-conn-{self.pod}-{self._count}")
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
        try:
            try:
                forward = self._open()
            except Exception as exc:
                _log.warning("port-forward to %s/%s:%s failed: %s", self.namespace, self.pod, self.port, exc)
                return
            remote = forward.socket(self.port)
            self._relay(conn, remote)
            error = forward.error(self.port)
            if error:
                _log.warning("port-forward to %s/%s:%s: %s", self.namespace, self.pod, self.port, error)
        finally:
            with self._lock:
                self._socks.discard(conn)
            conn.close()
            if remote is not None:
                # close() only cuts the local side; the client's end of the stream is
                # ended here, in order, so its proxy thread sees EOF and not a reset
                _drain_close(remote)
                remote.close()

    def _relay(self, a: Any, b: Any) -> None:
        peers = {a: b, b: a}
        while not self._closed.is_set():
            ready, _, _ = select.select(list(peers), [], [], 0.5)
            for s in ready:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    return  # either side ended: end both (gRPC reconnects through a new stream)
                try:
                    peers[s].sendall(data)
                except OSError:
                    return

    def close(self) -> None:
        self._closed.set()
        self._acceptor.join(timeout=5)
        self._listener.close()
        with self._lock:
            socks, threads = list(self._socks), list(self._threads)
        shutdown_and_join(socks, threads)
        self._api_client.close()


def _drain_close(sock: Any) -> None:
    """End our half first and read what is left, so the client's proxy sees EOF, not a reset."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(1.0)
        for _ in range(64):
            if not sock.recv(65536):
                break
    except OSError:
        pass
