"""A replica failing TLS beside a good one that is down only for a while must not make the pool less
available than leaving it out: calls and dispense() wait for the good one as they would without it, and
only at their deadline name the TLS failure (tests/test_network_mux_tls.py). A fail-at-once rule
(one endpoint failing TLS and every other unhealthy) ended start() while the good replica booted, calls
while it restarted, and counted a TLS proxy whose backend is down as a TLS failure.

The counter example in network mode over mTLS (tests/test_network_broker.py's CounterReplica); the
replica that fails TLS no longer trusts the host's certificate."""

from __future__ import annotations

import shutil
import socket
import ssl
import threading
from dataclasses import replace
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from plugbay import NoEndpointsError, RemoteClient, RemoteTLSError
from tests import netcerts
from tests.net_util import connection_lost
from tests.test_network_broker import PLUGIN_NAME, CounterReplica, counter_config, host_tls, wait_until
from tests.ports import HeldPort
from tests.test_network_mux_tls import _refusing_set

MODES = pytest.mark.parametrize("multiplexed", [True, False], ids=["multiplexed", "plain"])


def _answered(client: RemoteClient) -> None:
    """A new stub's call reached the plugin (no such key there: NOT_FOUND, from the plugin itself)."""
    with pytest.raises(grpc.RpcError) as missing:
        client.dispense(PLUGIN_NAME).get("n")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND, missing.value


class _Later:
    """A counter replica started on ``port`` once ``after`` seconds passed (a replica booting or coming
    back); stop() waits for it and stops it. The port refuses meanwhile, held so that nothing else takes it."""

    def __init__(self, folder: Path, certs: netcerts.CertSet, port: HeldPort, after: float) -> None:
        self.replica: CounterReplica | None = None
        self.listen = f"127.0.0.1:{port.port}"
        self._port = port
        self._timer = threading.Timer(after, self._start, (folder, certs))
        self._timer.start()

    def _start(self, folder: Path, certs: netcerts.CertSet) -> None:
        self._port.release()
        self.replica = CounterReplica(folder, certs, listen=self.listen)

    def stop(self) -> None:
        self._timer.cancel()
        self._timer.join()
        self._port.release()
        if self.replica is not None:
            self.replica.stop()
            shutil.rmtree(self.replica.tmp, ignore_errors=True)


@contextmanager
def _pair(tmp_path: Path) -> Iterator[tuple[netcerts.CertSet, CounterReplica]]:
    """The certificates, and a replica that refuses the host's certificate."""
    certs = netcerts.write_set(tmp_path / "tls")
    bad = CounterReplica(tmp_path / "bad", _refusing_set(certs, tmp_path, "plugin no longer trusts the host"))
    try:
        yield certs, bad
    finally:
        bad.stop()
        shutil.rmtree(bad.tmp, ignore_errors=True)


@MODES
def test_start_waits_for_a_good_replica_still_booting(tmp_path: Path, multiplexed: bool) -> None:
    """The good replica's first health check was refused (its port not open yet): start() ended at once with
    the other's RemoteTLSError, where it waits for the good one to come up."""
    with _pair(tmp_path) as (certs, bad):
        good = _Later(tmp_path / "good", certs, HeldPort(), 1.5)
        listen = good.listen
        try:
            config = counter_config([bad], host_tls(certs), health_interval=0.2, health_timeout=0.5,
                                    brokered=multiplexed, call_timeout=10.0)
            config = replace(config, target=f"static:///{bad.address},{listen}")
            with RemoteClient(config) as client:
                assert client.multiplexed is multiplexed
                _answered(client)
        finally:
            good.stop()


@MODES
@pytest.mark.parametrize("marked_down", [False, True], ids=["in-flight", "marked-down"])
def test_calls_wait_out_the_good_replicas_restart(tmp_path: Path, multiplexed: bool, marked_down: bool) -> None:
    """The good replica stopped and came back on its port 1.5 s later (call_timeout 10 s): once its health
    check failed, the call waiting for it (dispense() waiting for its session, when multiplexed) ended with
    the other replica's RemoteTLSError, where without that replica it would have been served.
    ``marked_down``: dispense() made once the health check had marked it down (back 1.5 s later): a
    multiplexed one found no endpoint to pin its stub to and failed at once (NoEndpoints, then the other
    replica's RemoteTLSError with no deadline reached), where a call waits call_timeout for an endpoint."""
    with _pair(tmp_path) as (certs, bad):
        good = CounterReplica(tmp_path / "good", certs)
        listen = good.address  # where it comes back
        back = None
        held: HeldPort | None = None
        try:
            with RemoteClient(counter_config([bad, good], host_tls(certs), health_interval=0.2, health_timeout=0.5,
                                             brokered=multiplexed, call_timeout=10.0)) as client:
                _answered(client)
                good.stop()
                held = HeldPort(port=int(listen.rpartition(":")[2]))  # refusing while it is down
                connection_lost(client, f"tcp:{good.address}")  # else the call may break in flight (not sent again)
                if marked_down:  # the dispense() below starts while the good one is marked down
                    assert wait_until(lambda: client.metrics()["available"] == 0, 10)
                back = _Later(tmp_path / "back", certs, held, 1.5)
                _answered(client)
        finally:
            good.stop()
            shutil.rmtree(good.tmp, ignore_errors=True)
            if held is not None:
                held.release()
            if back is not None:
                back.stop()


@contextmanager
def _proxy_without_backend(certs: netcerts.CertSet) -> Iterator[str]:
    """A TLS-terminating proxy whose backend is down: it completes the handshake with the right
    certificates (and takes the host's), then closes the connection."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certs.cert_file), str(certs.key_file))
    context.load_verify_locations(str(certs.client_ca_file))
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(50)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            try:
                context.wrap_socket(conn, server_side=True).close()
            except (OSError, ssl.SSLError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1:%d" % listener.getsockname()[1]
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(10)


def test_a_tls_proxy_without_backend_is_no_tls_failure(tmp_path: Path) -> None:
    """A TLS proxy that closes after each handshake (its backend down) is told from a refused certificate
    by nothing but time (tlsprobe.CLOSED_AFTER_HANDSHAKE): it is named as a possibility, never as a TLS
    failure. It ended a call waiting for a good replica's restart with RemoteTLSError; with the good one
    gone, the call's deadline is a NoEndpointsError, as without the proxy."""
    certs = netcerts.write_set(tmp_path / "tls")
    good = CounterReplica(tmp_path / "good", certs)
    listen = good.address  # where it comes back
    back = None
    held: HeldPort | None = None
    try:
        with _proxy_without_backend(certs) as proxy:
            config = counter_config([good], host_tls(certs), health_interval=0.2, health_timeout=0.5,
                                    brokered=False, call_timeout=4.0)
            with RemoteClient(replace(config, target=f"static:///{proxy},{listen}")) as client:
                def detail() -> str:
                    return str(client.metrics()["endpoints"][f"tcp:{proxy}"]["health_detail"])
                # the verdict, once the closes went on long enough (3 s): a possibility only
                assert wait_until(lambda: "(perhaps a TLS failure: " in detail(), 20.0), detail()
                assert "(TLS failure" not in detail() and "right after each TLS handshake" in detail(), detail()
                good.stop()
                held = HeldPort(port=int(listen.rpartition(":")[2]))  # refusing while it is down
                back = _Later(tmp_path / "back", certs, held, 1.5)
                _answered(client)
                back.stop()
                with pytest.raises(NoEndpointsError) as err:
                    client.dispense(PLUGIN_NAME).get("n")
                assert not isinstance(err.value, RemoteTLSError)
                assert f"tcp:{proxy} unhealthy" in str(err.value)
    finally:
        good.stop()
        shutil.rmtree(good.tmp, ignore_errors=True)
        if held is not None:
            held.release()
        if back is not None:
            back.stop()
