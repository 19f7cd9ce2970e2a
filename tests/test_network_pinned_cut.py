"""A stub pinned to a LIVE replica whose connection was cut (a proxy, NAT or load balancer dropping it): the
replica still listens, so the pinned call dials it again and goes on. Pin.gone() said "gone" whenever the stub's
yamux session had closed and no new one was up yet, and gRPC redials only when something calls: the call
failed PinnedEndpointGoneError at once. Real counter replicas (mTLS) behind a small TCP forwarder on 127.0.0.1
that cuts its live connections; a killed replica still fails at once (test_network_pinned_gone)."""

from __future__ import annotations

import dataclasses
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugbay import RemoteClient
from tests import netcerts
from tests.net_util import connection_lost
from tests.test_network_broker import PLUGIN_NAME, Adder, CounterReplica, counter_config, host_tls, killable_pair

CALL_TIMEOUT = 20.0  # a bound only: the call below is answered once its session is dialed again


class Forwarder:
    """127.0.0.1:port -> ``target``, one pair of pumping threads per connection; cut() drops the live ones."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host.strip("[]"), int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._live: list[socket.socket] = []
        self._made: list[socket.socket] = []  # every socket, closed by close()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._start(self._accept)

    def _start(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name="test-forwarder", daemon=True)  # type: ignore
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                out = socket.create_connection(self._target, timeout=10)
            except OSError:
                conn.close()
                continue
            out.settimeout(None)
            with self._lock:
                if self._closed:
                    conn.close(), out.close()
                    return
                self._live += [conn, out]
                self._made += [conn, out]
            self._start(self._pump, conn, out)
            self._start(self._pump, out, conn)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        with self._lock:
            live, self._live = self._live, []
        for sock in live:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # ends the accept() under way (close() alone does not)
        except OSError:
            pass
        self._listener.close()
        self.cut()
        for thread in list(self._threads):
            thread.join(10)
        for sock in self._made:
            sock.close()


@pytest.fixture
def counters(tmp_path: Path, certs: netcerts.CertSet) -> Iterator[list[CounterReplica]]:
    yield from killable_pair(tmp_path, certs)


@pytest.fixture
def certs(tmp_path: Path) -> netcerts.CertSet:
    return netcerts.write_set(tmp_path / "tls")


def test_a_stub_pinned_to_a_live_replica_whose_connection_was_cut_is_answered(counters: list[CounterReplica],
                                                                              certs: netcerts.CertSet) -> None:
    replica = counters[0]
    forwarder = Forwarder(replica.address)
    try:
        config = dataclasses.replace(counter_config([replica], host_tls(certs), multiplex=True,
                                                    call_timeout=CALL_TIMEOUT, health_interval=60),
                                     target=f"static:///{forwarder.address}")
        with RemoteClient(config) as client:
            stub = client.dispense(PLUGIN_NAME)
            stub.put("k", 1, Adder())
            forwarder.cut()
            connection_lost(client, f"tcp:{forwarder.address}")
            assert stub.get("k") == 1  # dialed again through the forwarder, to the same live replica
            assert client.pool.member(f"tcp:{forwarder.address}").channel.session_up
    finally:
        forwarder.close()
