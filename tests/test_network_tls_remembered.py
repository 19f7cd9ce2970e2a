"""How long a pool remembers that an endpoint's TLS handshake failed.

A later health-check failure that says nothing about TLS (the replica down, its connection refused) cleared
the verdict, so a call waiting to its deadline ended NoEndpointsError whose text had lost the TLS cause. The
verdict is now remembered, and named in that NoEndpointsError (UNAVAILABLE: a RetryPolicy retries it, as the
replica may come back fixed), until the endpoint answers over TLS: a health check answered with any status
(NOT_SERVING too) ends it. RemoteTLSError, which is never retried, stays for an endpoint whose latest failure
is a TLS one.

The counter example in network mode over mTLS (tests/test_network_broker.py's CounterReplica), multiplexed
and plain; and a bare gRPC health server answering NOT_SERVING behind an EndpointPool.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugbay import BrokerError, NetworkTLS, NoEndpointsError, RemoteTLSError
from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.network.pool import EndpointPool
from plugbay.network.resolver import Endpoint
from tests import netcerts
from tests.ports import HeldPort
from tests.test_network_broker import PLUGIN_NAME, CounterReplica, host_tls, wait_until
from tests.test_network_drain import PushResolver
from tests.test_network_mux_tls import _beside_a_good_one, _refusing_set
from tests.tls_server_util import TLSTestServer, serve_mtls

REMEMBERED = "last TLS failure found: the plugin refused the"


@pytest.mark.parametrize("multiplexed", [True, False], ids=["multiplexed", "plain"])
def test_a_tls_failure_is_remembered_through_a_refused_connection(tmp_path: Path, multiplexed: bool,
                                                                  hold_port: Callable[[int], HeldPort]) -> None:
    """The replica failing TLS stops (its health check then refused: nothing about TLS), then the good one:
    the call ends NoEndpointsError, retryable, naming the TLS failure remembered; once the replica is back
    failing TLS, RemoteTLSError again."""
    with _beside_a_good_one(tmp_path, "plugin no longer trusts the host", multiplexed, call_timeout=3.0) as (
            client, bad, good):
        def detail() -> str:
            return str(client.metrics()["endpoints"][f"tcp:{bad.address}"]["health_detail"])
        assert wait_until(lambda: "TLS failure: " in detail(), 15.0), detail()
        bad.stop()
        down = hold_port(int(bad.address.rpartition(":")[2]))  # refusing while it is down: nothing else takes it
        assert wait_until(lambda: REMEMBERED in detail() and "TLS failure: " not in detail(), 15.0), detail()
        good.stop()
        # multiplexed, dispense() waits for a session: BrokerError "did not come up", as with no TLS failure
        with pytest.raises(BrokerError if multiplexed else NoEndpointsError) as err:
            client.dispense(PLUGIN_NAME).get("n")
        assert not isinstance(err.value, RemoteTLSError), err.value
        if not multiplexed:
            assert isinstance(err.value, grpc.RpcError) and err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert f"tcp:{bad.address} unhealthy (" in str(err.value), err.value
        assert f"tcp:{bad.address}" in str(err.value) and REMEMBERED in str(err.value), err.value

        # back with certificates from another CA
        down.release()
        again = CounterReplica(tmp_path / "again", netcerts.write_set(tmp_path / "another"), listen=bad.address)
        try:
            assert wait_until(lambda: "TLS failure: " in detail(), 15.0), detail()
            with pytest.raises(RemoteTLSError) as tls_err:
                client.dispense(PLUGIN_NAME).get("n")
            assert f"TLS with remote plugin 'counter' at tcp:{bad.address} failed" in str(tls_err.value)
        finally:
            again.stop()
            shutil.rmtree(again.tmp, ignore_errors=True)


class _NotServing(health_pb2_grpc.HealthServicer):
    def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext) -> Any:
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING)


def _serve_not_serving(listen: str, certs: netcerts.CertSet) -> tuple[grpc.Server, str]:
    return serve_mtls(listen, certs, _NotServing())


@contextmanager
def pool_at(listen: str, tls: NetworkTLS, **kw: Any) -> Iterator[tuple[EndpointPool, Callable[[], str]]]:
    """A started EndpointPool of the one endpoint at ``listen`` (health checked every 0.2 s), and a reader of
    that endpoint's health detail; closed on the way out."""
    pool = EndpointPool(PushResolver([Endpoint("tcp", listen)]), tls=tls, health_interval=0.2, health_timeout=0.5,
                        name="remembered", **kw)
    try:
        pool.start()
        yield pool, lambda: str(pool.metrics()["endpoints"][f"tcp:{listen}"]["health_detail"])
    finally:
        pool.close()


def test_a_health_check_answered_not_serving_ends_the_tls_failure_remembered(
        tmp_path: Path, hold_port: Callable[[int], HeldPort]) -> None:
    """A replica that failed TLS is down (remembered), then replaced at its address by a rightly certified
    server whose health check answers NOT_SERVING: that answer came over TLS that works, so the deadline's
    NoEndpointsError says NOT_SERVING alone (a RemoteTLSError there would end a RetryPolicy's retries)."""
    certs = netcerts.write_set(tmp_path / "tls")
    server, listen = _serve_not_serving("127.0.0.1:0", _refusing_set(certs, tmp_path,
                                                                      "plugin certificate from another CA"))
    try:
        with pool_at(listen, host_tls(certs)) as (pool, detail):
            assert wait_until(lambda: "TLS failure: " in detail(), 15.0), detail()
            server.stop(0).wait(5)
            down = hold_port(int(listen.rpartition(":")[2]))  # refusing while it is down: nothing else takes it
            assert wait_until(lambda: "last TLS failure found: " in detail()
                              and "TLS failure: " not in detail(), 15.0), detail()
            down.release()
            server, _ = _serve_not_serving(listen, certs)
            assert wait_until(lambda: detail() == "NOT_SERVING", 15.0), detail()
            with pytest.raises(NoEndpointsError) as err:
                pool.unary_unary("/kv.KV/Get")(b"", timeout=1.0)
            assert not isinstance(err.value, RemoteTLSError), err.value
            assert f"tcp:{listen} unhealthy (NOT_SERVING)" in str(err.value) and "TLS" not in str(err.value), \
                err.value
    finally:
        server.stop(0).wait(5)


class _TakesOnlyTheProbe(TLSTestServer):
    """At ``listen``: closes gRPC's connections before the handshake (a health check cut short), and completes
    the TLS probe's with ``served``'s certificate, keeping the connection. The probe sends the name gRPC sends
    (none, to an IP address); its TLS stack tells it apart: Python's OpenSSL offers encrypt_then_mac, which
    gRPC's BoringSSL does not."""

    def __init__(self, listen: str, served: netcerts.CertSet, host_ca: Path) -> None:
        self._held: list[socket.socket] = []
        super().__init__(listen, served.cert_file, served.key_file, host_ca, alpn=["h2"])

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)
        hello = _client_hello(conn)
        if _ENCRYPT_THEN_MAC not in _extensions(hello):
            conn.close()
            return
        self._held.append(self.ctx.wrap_socket(conn, server_side=True))
        self.taken += 1

    def close(self) -> None:
        super().close()
        for conn in self._held:
            conn.close()


_ENCRYPT_THEN_MAC = 22  # a TLS extension type (RFC 7366)


def _extensions(hello: bytes) -> list[int]:
    """The extension types a ClientHello record offers ([] for one cut short)."""
    try:
        at = 5 + 4 + 2 + 32  # record header, handshake header, version, random
        at += 1 + hello[at]  # session id
        at += 2 + int.from_bytes(hello[at:at + 2], "big")  # cipher suites
        at += 1 + hello[at]  # compression methods
        end, at = at + 2 + int.from_bytes(hello[at:at + 2], "big"), at + 2
    except IndexError:
        return []
    found = []
    while at + 4 <= min(end, len(hello)):
        found.append(int.from_bytes(hello[at:at + 2], "big"))
        at += 4 + int.from_bytes(hello[at + 2:at + 4], "big")
    return found


def _client_hello(conn: socket.socket) -> bytes:
    hello = b""
    for _ in range(50):  # the whole record: a TLS header gives its length
        hello = conn.recv(8192, socket.MSG_PEEK)
        if not hello or len(hello) >= 5 and len(hello) >= 5 + int.from_bytes(hello[3:5], "big"):
            break
        time.sleep(0.01)
    return hello


def test_a_plain_probe_taken_keeps_a_failure_of_the_plugins_certificate(
        tmp_path: Path, hold_port: Callable[[int], HeldPort]) -> None:
    """Plain gRPC's TLS probe does not check the plugin's certificate: a plugin certificate from another CA
    (gRPC's generic "handshake failed") stays remembered through probes whose handshake the plugin took."""
    certs = netcerts.write_set(tmp_path / "tls")
    other = _refusing_set(certs, tmp_path, "plugin certificate from another CA")
    server, listen = _serve_not_serving("127.0.0.1:0", other)
    tls = dataclasses.replace(host_tls(certs), server_name=None)  # the probe's name tells its connections
    split: _TakesOnlyTheProbe | None = None
    try:
        with pool_at(listen, tls) as (_, detail):
            assert wait_until(lambda: "TLS failure: the TLS handshake failed" in detail(), 15.0), detail()
            server.stop(0).wait(5)
            down = hold_port(int(listen.rpartition(":")[2]))  # refusing while it is down: nothing else takes it
            assert wait_until(lambda: "last TLS failure found: " in detail() and "TLS failure: " not in detail(),
                              15.0), detail()
            down.release()
            split = _TakesOnlyTheProbe(listen, other, certs.client_ca_file)
            assert wait_until(lambda: split is not None and split.taken >= 2, 15.0), detail()
            assert "last TLS failure found: the TLS handshake failed" in detail(), detail()
    finally:
        server.stop(0).wait(5)
        if split is not None:
            split.close()
