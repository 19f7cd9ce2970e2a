"""When the pool forgets the TLS failure it remembered of an endpoint (Member.tls_learned, pooltls.PoolTLS).

The failure stays named in the endpoint's health detail through failures that say nothing about TLS, until
the endpoint answers over TLS: a call answered ends it, on the sync pool and the asyncio one, unary or
stream; so does a multiplexed endpoint's TLS probe whose handshake the plugin took (that probe checks the
plugin's certificate too). A status gRPC makes without a connection (UNKNOWN, from a request iterator that
raised) is no answer; and an endpoint dialed again with the host's renewed files keeps no note of what the
old files met.

Real TLS servers on loopback (grpcio's, and an OpenSSL one); the counter example in network mode over mTLS
(tests/test_network_broker.py's CounterReplica) where a plugin process is needed. The endpoint stays in use
through health checks that fail without an answer (a high unhealthy_after), so that a call can reach it.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugbay import NetworkTLS, RemoteClient
from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.network.aiopool import AioEndpoints, AioPoolChannel
from plugbay.network.pool import EndpointPool
from tests import netcerts
from tests.ports import HeldPort
from tests.test_network_broker import PLUGIN_NAME, CounterReplica, counter_config, host_tls, wait_until
from tests.test_network_mux_tls import _refusing_set
from tests.test_network_tls_remembered import pool_at
from tests.test_network_tls_renewal import _host_files, _swap
from tests.tls_server_util import TLSTestServer, serve_mtls

GET, WATCH, SUM = "/kv.KV/Get", "/kv.KV/Watch", "/kv.KV/Sum"
STEADY = 1000  # unhealthy_after: failed health checks leave the endpoint in use (and its health detail as set)
ANOTHER_CA = "plugin certificate from another CA"


class _Health(health_pb2_grpc.HealthServicer):
    """SERVING, or (``answers`` False) the server's own UNAVAILABLE, which gRPC also makes with no connection
    at all: no proof that TLS works."""

    def __init__(self, answers: bool) -> None:
        self.answers = answers
        self.checks = 0

    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 (gRPC's name)
        self.checks += 1
        if not self.answers:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def _serve(listen: str, certs: netcerts.CertSet, health: _Health) -> tuple[grpc.Server, str]:
    """A grpcio server over mTLS at ``listen`` (port 0: any free one): ``health``, a unary Get and a streaming
    Watch; and the host:port it listens at."""
    return serve_mtls(listen, certs, health, (grpc.method_handlers_generic_handler("kv.KV", {
        "Get": grpc.unary_unary_rpc_method_handler(lambda request, context: b"v"),
        "Watch": grpc.unary_stream_rpc_method_handler(lambda request, context: iter([b"1", b"2"])),
    }),))


def _learned(pool: EndpointPool, key: str) -> str | None:
    member = pool.member(key)
    return None if member is None else member.tls_learned


class _Silent:
    """At ``listen``: takes TCP connections and never says a word, so no TLS handshake ends (a black hole)."""

    def __init__(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self._sock = socket.create_server((host, int(port)), reuse_port=True)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._take, daemon=True)
        self._thread.start()

    @property
    def taken(self) -> int:
        return len(self._held)

    def _take(self) -> None:
        while not self._stop.is_set():
            try:
                self._held.append(self._sock.accept()[0])
            except OSError:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._sock.close()
        for conn in self._held:
            conn.close()


@contextmanager
def _remembered(tmp_path: Path, black_holed: bool = False) -> Iterator[tuple[EndpointPool, _Health]]:
    """A pool whose endpoint passed its health checks, failed TLS (its server's certificate from another CA),
    and is served rightly again, its health checks failing without an answer (the _Health yielded): the TLS
    failure is remembered, the endpoint still in use. ``black_holed``: then its server goes, and gRPC's next
    connection to it is never set up (a black hole in its place, taking over its port before it stops)."""
    certs = netcerts.write_set(tmp_path / "tls")
    first, listen = _serve("127.0.0.1:0", certs, _Health(answers=True))
    key = f"tcp:{listen}"
    health = _Health(answers=False)
    # each later server is started right after the one before stops: the gap is its own start (tests/ports.py)
    servers = [first]
    silent: _Silent | None = None
    try:
        with pool_at(listen, host_tls(certs), unhealthy_after=STEADY) as (pool, detail):
            assert wait_until(lambda: pool.metrics()["healthy"] == 1, 15.0), detail()
            servers.pop().stop(0).wait(5)
            servers.append(_serve(listen, _refusing_set(certs, tmp_path, ANOTHER_CA), _Health(answers=True))[0])
            assert wait_until(lambda: _learned(pool, key) is not None, 15.0), detail()
            servers.pop().stop(0).wait(5)
            servers.append(_serve(listen, certs, health)[0])
            # the latest failure says nothing of TLS (the server's own UNAVAILABLE): remembered
            assert wait_until(lambda: health.checks >= 2 and pool.tls_remembered() != "", 15.0), detail()
            if black_holed:
                silent = _Silent(listen)  # beside the server (SO_REUSEPORT): no moment with the port closed
                servers.pop().stop(0).wait(5)
                # its connection gone, gRPC's next one hangs in its setup: the checks' deadlines say nothing
                assert wait_until(lambda: silent is not None and silent.taken >= 1, 15.0), detail()
            assert pool.metrics()["healthy"] == 1 and pool.tls_remembered() != ""  # still in use, remembered
            yield pool, health
    finally:
        for server in servers:
            server.stop(0).wait(5)
        if silent is not None:
            silent.close()


def _call(pool: EndpointPool, how: str) -> Any:
    """One call answered OK through ``pool``: sync or on grpc.aio, unary or a stream read to its end."""
    if how == "sync-unary":
        return pool.unary_unary(GET)(b"", timeout=5.0)
    if how == "sync-stream":
        return list(pool.unary_stream(WATCH)(b"", timeout=5.0))

    async def main() -> Any:
        channel = AioPoolChannel(AioEndpoints(pool))
        try:
            if how == "aio-unary":
                got = await channel.unary_unary(GET)(b"", timeout=5.0)
            else:
                got = [item async for item in channel.unary_stream(WATCH)(b"", timeout=5.0)]
            for _ in range(100):  # a stream's end reaches the pool from a task on this loop: let it run
                if not pool.tls_remembered():
                    break
                await asyncio.sleep(0.05)
            return got
        finally:
            await channel.close()
    return asyncio.run(main())


@pytest.mark.parametrize("how", ["sync-unary", "sync-stream", "aio-unary", "aio-stream"])
def test_a_call_answered_ends_the_tls_failure_remembered(tmp_path: Path, how: str) -> None:
    """The endpoint is back with the right certificate; its health checks fail without an answer (so they
    end nothing), but a call it answers came over TLS that works: the failure is no longer named."""
    with _remembered(tmp_path) as (pool, health):
        assert _call(pool, how) in (b"v", [b"1", b"2"])
        assert wait_until(lambda: pool.tls_remembered() == "", 5.0), pool.tls_remembered()
        assert health.checks >= 2  # health checks ran meanwhile (each the server's UNAVAILABLE): they ended nothing


def test_a_status_grpc_makes_without_a_connection_is_no_answer(tmp_path: Path) -> None:
    """A client-streaming call whose request iterator raises ends UNKNOWN, made by gRPC while its connection
    is still being set up (the endpoint black-holed): that status says nothing of the endpoint's TLS, so the
    failure stays named."""
    def requests() -> Iterator[bytes]:
        raise RuntimeError("the caller's requests failed")
        yield b""  # a generator

    with _remembered(tmp_path, black_holed=True) as (pool, _):
        key = next(iter(pool.metrics()["endpoints"]))
        learned = _learned(pool, key)
        assert learned is not None
        with pytest.raises(grpc.RpcError) as err:
            pool.stream_unary(SUM)(requests(), timeout=5.0)
        assert err.value.code() == grpc.StatusCode.UNKNOWN, err.value
        assert _learned(pool, key) == learned and learned in pool.tls_remembered(), pool.tls_remembered()


class _TakesEveryHandshake(TLSTestServer):
    """At ``listen``, with the right certificates (``served``, taking the host's): completes every TLS
    handshake, then closes the connection once anything comes on it (a relay's yamux session, which so never
    comes up: gRPC's connection closes during setup, and the pool probes) or once the peer closes it.
    ``taken`` counts the connections closed by the peer having said nothing: TLS probes."""

    def __init__(self, listen: str, served: netcerts.CertSet) -> None:
        super().__init__(listen, served.cert_file, served.key_file, served.client_ca_file)

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(3.0)
        with self.ctx.wrap_socket(conn, server_side=True) as tls:
            try:
                said = tls.recv(1)
            except (ssl.SSLEOFError, ConnectionResetError):
                said = b""
            if said == b"":
                self.taken += 1


def test_a_multiplexed_probe_whose_handshake_the_plugin_took_ends_the_tls_failure_remembered(
        tmp_path: Path, hold_port: Callable[[int], HeldPort]) -> None:
    """A multiplexed endpoint's TLS probe makes the relay's own handshake, checking the plugin's certificate
    too: one the plugin took proves the certificate from another CA is gone, though no health check answers
    (the endpoint closes each session before it comes up)."""
    certs = netcerts.write_set(tmp_path / "tls")
    bad = CounterReplica(tmp_path / "bad", _refusing_set(certs, tmp_path, ANOTHER_CA))
    good = CounterReplica(tmp_path / "good", certs)
    taker: _TakesEveryHandshake | None = None
    try:
        with RemoteClient(counter_config([bad, good], host_tls(certs), health_interval=0.2, health_timeout=0.5,
                                         brokered=True, call_timeout=3.0)) as client:
            assert client.multiplexed
            with pytest.raises(grpc.RpcError) as missing:  # the good one answers
                client.dispense(PLUGIN_NAME).get("n")
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND

            def detail() -> str:
                return str(client.metrics()["endpoints"][f"tcp:{bad.address}"]["health_detail"])
            assert wait_until(lambda: "TLS failure: the plugin's certificate is not signed" in detail(), 15.0), \
                detail()
            bad.stop()
            down = hold_port(int(bad.address.rpartition(":")[2]))  # refusing while it is down: nothing else takes it
            assert wait_until(lambda: "last TLS failure found: the plugin's certificate is not signed" in detail()
                              and "TLS failure: " not in detail(), 15.0), detail()
            down.release()
            taker = _TakesEveryHandshake(bad.address, certs)
            assert wait_until(lambda: taker is not None and taker.taken >= 1
                              and "TLS failure" not in detail(), 15.0), detail()
    finally:
        for replica in (bad, good):
            replica.stop()
            shutil.rmtree(replica.tmp, ignore_errors=True)
        if taker is not None:
            taker.close()


def test_an_endpoint_dialed_again_with_renewed_files_keeps_no_note_of_the_old_ones(
        tmp_path: Path, hold_port: Callable[[int], HeldPort]) -> None:
    """The plugin refused the host's certificate, then went down (the failure remembered); the host's files
    are renewed meanwhile, and the endpoint dialed again with them: what the old files met is said no more,
    neither as the remembered failure nor in the health detail carried over."""
    certs = netcerts.write_set(tmp_path / "tls")
    foreign = netcerts.make_ca("a CA the plugin does not trust")
    cert, key, ca = _host_files(tmp_path / "host", netcerts.issue(foreign, "host v1", server=False),
                                certs.server_ca)
    plugin = CounterReplica(tmp_path / "plugin", certs)
    endpoint = f"tcp:{plugin.address}"
    try:
        with pool_at(plugin.address, NetworkTLS(cert, key, ca, server_name="localhost"),
                     unhealthy_after=STEADY) as (pool, detail):
            assert wait_until(lambda: "(TLS failure: the plugin refused the" in detail(), 15.0), detail()
            plugin.stop()
            hold_port(int(plugin.address.rpartition(":")[2]))  # refusing while it is down: nothing else takes it
            assert wait_until(lambda: pool.tls_remembered() != "", 15.0), detail()  # down since: remembered
            old = pool.member(endpoint)
            _swap(tmp_path / "host", netcerts.issue(certs.client_ca, "host v2", server=False), "..v2")
            assert wait_until(lambda: pool.member(endpoint) is not old, 15.0)
            assert pool.tls_remembered() == "" and "TLS failure" not in detail(), (pool.tls_remembered(), detail())
    finally:
        plugin.stop()
        shutil.rmtree(plugin.tmp, ignore_errors=True)
