"""Renewed NetworkTLS files reach endpoints whose channel already exists: grpcio reconnects a channel with
the credentials it was made with, so the pool dials each endpoint again with the new files, and the old
channel closes once its calls end (a stream open across the renewal finishes on it). The same on grpc.aio.

Real grpcio mTLS servers on loopback noting each call's client certificate; the host's files laid out as a
Secret mount and renewed by a ``..data`` swap (tests/test_network_tls_renewal.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugbay import NetworkTLS, PluginUnavailableError
from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.network.aiopool import AioEndpoints, AioPoolChannel
from plugbay.network.pool import EndpointPool
from plugbay.network.resolver import Endpoint
from tests import netcerts
from tests.resilience_util import wait_until
from tests.test_network_tls_renewal import _host_files, _Steered, _swap

_SERVING = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


class _Health(health_pb2_grpc.HealthServicer):
    """Notes the client certificate's common name per call (and per service asked about, to tell the
    pool's own health checks from the test's calls); Watch answers, then holds until ``release``."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.asked: dict[str, list[str]] = {}
        self.release = threading.Event()

    def _note(self, request: Any, context: grpc.ServicerContext) -> None:
        name = (context.auth_context().get("x509_common_name") or [b"?"])[0].decode()
        self.seen.append(name)
        self.asked.setdefault(request.service, []).append(name)

    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 (gRPC's name)
        self._note(request, context)
        return _SERVING

    def Watch(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:  # noqa: N802
        self._note(request, context)
        yield _SERVING
        self.release.wait(20)
        yield _SERVING


class _Replica:
    def __init__(self, certs: netcerts.CertSet, port: int = 0) -> None:
        self.health = _Health()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)  # type: ignore[no-untyped-call]
        creds = grpc.ssl_server_credentials([(certs.key_file.read_bytes(), certs.cert_file.read_bytes())],
                                            root_certificates=certs.client_ca_file.read_bytes(),
                                            require_client_auth=True)
        self.port = self.server.add_secure_port(f"127.0.0.1:{port}", creds)
        self.server.start()

    def stop(self) -> None:
        self.health.release.set()
        self.server.stop(None).wait(10)


@pytest.fixture()
def setup(tmp_path: Path) -> Iterator[tuple[netcerts.CertSet, NetworkTLS, list[_Replica]]]:
    certs = netcerts.write_set(tmp_path / "server")
    cert, key, ca = _host_files(tmp_path / "host", netcerts.issue(certs.client_ca, "host v1", server=False),
                                certs.server_ca)
    made: list[_Replica] = []
    try:
        yield certs, NetworkTLS(cert, key, ca, server_name="localhost"), made
    finally:
        for replica in made:
            replica.stop()


def _renew(tmp_path: Path, certs: netcerts.CertSet) -> None:
    _swap(tmp_path / "host", netcerts.issue(certs.client_ca, "host v2", server=False), "..v2")


def _one_replica_pool(setup: tuple[netcerts.CertSet, NetworkTLS, list[_Replica]],
                      **options: Any) -> tuple[_Replica, _Steered, EndpointPool]:
    """A replica and a pool (not started) reaching it with the host's files, health checked every 0.1 s."""
    certs, tls, made = setup
    made.append(replica := _Replica(certs))
    resolver = _Steered([Endpoint("tcp", f"127.0.0.1:{replica.port}")])
    return replica, resolver, EndpointPool(resolver, tls=tls, health_interval=0.1, health_timeout=2.0, **options)


def test_a_replica_restarting_at_the_same_address_gets_the_renewed_certificate(
        tmp_path: Path, setup: tuple[netcerts.CertSet, NetworkTLS, list[_Replica]]) -> None:
    certs, _, made = setup
    first, _, pool = _one_replica_pool(setup)
    try:
        pool.start()
        assert wait_until(lambda: first.health.seen, 10)
        _renew(tmp_path, certs)
        assert wait_until(lambda: "host v2" in first.health.seen, 10), first.health.seen  # the live replica too
        first.stop()  # the replica restarts at the same address (a static target, a Service's ClusterIP)
        made.append(again := _Replica(certs, first.port))
        assert wait_until(lambda: len(again.health.seen) >= 2, 15), again.health.seen
        assert set(again.health.seen) == {"host v2"}
        assert wait_until(lambda: pool.metrics()["draining"] == 0, 10)  # the old channel closed
        assert pool.metrics()["healthy"] == 1
    finally:
        pool.close()


def _watching(pool: EndpointPool) -> Any:
    """A Health Watch stream through the pool, its first answer read (the replica then holds it)."""
    watch = pool.unary_stream("/grpc.health.v1.Health/Watch",
                              request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                              response_deserializer=health_pb2.HealthCheckResponse.FromString)
    stream = watch(health_pb2.HealthCheckRequest(service="plugin"), timeout=30)
    assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
    return stream


@pytest.mark.parametrize("endpoint_leaves", [False, True])
def test_a_stream_open_across_the_renewal_finishes_on_its_channel(
        tmp_path: Path, setup: tuple[netcerts.CertSet, NetworkTLS, list[_Replica]], endpoint_leaves: bool) -> None:
    certs = setup[0]
    replica, resolver, pool = _one_replica_pool(setup, drain_timeout=0.3)
    try:
        pool.start()
        stream = _watching(pool)
        _renew(tmp_path, certs)
        assert wait_until(lambda: "host v2" in replica.health.seen, 10), replica.health.seen
        if endpoint_leaves:
            assert resolver.report is not None
            resolver.report([])  # the endpoint leaves discovery: its renewed-away channel waits no longer
            assert wait_until(lambda: pool.metrics()["draining"] == 0, 5), pool.metrics()
            with pytest.raises(PluginUnavailableError, match="left discovery"):
                list(stream)  # cut at drain_timeout, as any leaving endpoint's calls are
            return
        # well past drain_timeout: the old channel waits for its call, it is not cut
        assert not wait_until(lambda: pool.metrics()["draining"] == 0, 1.0)
        replica.health.release.set()
        assert [r.status for r in stream] == [health_pb2.HealthCheckResponse.SERVING]
        assert stream.code() == grpc.StatusCode.OK
        assert wait_until(lambda: pool.metrics()["draining"] == 0, 10)
    finally:
        pool.close()


async def _renewed_and_redialed(pool: EndpointPool, tmp_path: Path, certs: netcerts.CertSet) -> None:
    """Renew the host's files, then wait until the pool dialed its one endpoint again (bounded: 10 s)."""
    key = next(iter(pool.metrics()["endpoints"]))
    before = pool.member(key)
    _renew(tmp_path, certs)
    for _ in range(200):
        if pool.member(key) is not before:
            return
        await asyncio.sleep(0.05)


def test_async_calls_present_the_renewed_certificate(
        tmp_path: Path, setup: tuple[netcerts.CertSet, NetworkTLS, list[_Replica]]) -> None:
    certs = setup[0]
    replica, _, pool = _one_replica_pool(setup)

    async def main() -> list[str]:
        channel = AioPoolChannel(AioEndpoints(pool))
        stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
        try:
            request = health_pb2.HealthCheckRequest(service="aio")  # the pool's own checks ask for "plugin"
            await stub.Check(request, timeout=5)
            await _renewed_and_redialed(pool, tmp_path, certs)
            await stub.Check(request, timeout=5)
            return replica.health.asked["aio"]
        finally:
            await channel.close()

    try:
        pool.start()
        assert asyncio.run(main()) == ["host v1", "host v2"]
    finally:
        pool.close()


def test_a_renewed_async_channel_whose_endpoint_leaves_closes_within_drain_timeout(
        tmp_path: Path, setup: tuple[netcerts.CertSet, NetworkTLS, list[_Replica]]) -> None:
    certs = setup[0]
    replica, resolver, pool = _one_replica_pool(setup, drain_timeout=0.3)

    async def main() -> float:
        channel = AioPoolChannel(AioEndpoints(pool))
        stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
        try:
            stream = stub.Watch(health_pb2.HealthCheckRequest(service="aio"), timeout=30)
            assert (await stream.read()).status == health_pb2.HealthCheckResponse.SERVING
            await _renewed_and_redialed(pool, tmp_path, certs)
            await stub.Check(health_pb2.HealthCheckRequest(service="aio"), timeout=5)  # retires the old channel
            assert resolver.report is not None
            resolver.report([])  # the endpoint leaves: the renewed-away channel waits no longer
            began = asyncio.get_running_loop().time()
            with pytest.raises(PluginUnavailableError, match="left discovery"):  # cut at drain_timeout: typed
                await asyncio.wait_for(stream.read(), 10)
            return asyncio.get_running_loop().time() - began
        finally:
            await channel.close()

    try:
        pool.start()
        assert asyncio.run(main()) < 5  # drain_timeout 0.3 s and a prune, not the Watch's 20 s hold
    finally:
        pool.close()


def test_async_calls_in_flight_are_counted_per_channel_until_they_end(
        setup: tuple[netcerts.CertSet, NetworkTLS, list[_Replica]]) -> None:
    # a renewed-away grpc.aio channel closes once its count is 0: no ending may leave it counted
    _, _, pool = _one_replica_pool(setup)

    async def main() -> None:
        endpoints = AioEndpoints(pool)
        channel = AioPoolChannel(endpoints)
        stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
        try:
            request = health_pb2.HealthCheckRequest(service="aio")
            await stub.Check(request, timeout=5)
            assert endpoints._inflight == {}
            streams = [stub.Watch(request, timeout=30) for _ in range(2)]
            for stream in streams:
                assert (await stream.read()).status == health_pb2.HealthCheckResponse.SERVING
            assert list(endpoints._inflight.values()) == [2]
            with pytest.raises(TypeError):  # the call is refused before it exists: never counted
                await stub.Check(request, timeout=5, not_a_call_option=1)
            assert list(endpoints._inflight.values()) == [2]
            streams[0].cancel()
            await asyncio.sleep(0.1)
            assert list(endpoints._inflight.values()) == [1]
        finally:
            await channel.close()  # cancels the other
        assert endpoints._inflight == {} and endpoints._calls == {}

    try:
        pool.start()
        asyncio.run(main())
    finally:
        pool.close()
