"""A call's timeout=0 (or a deadline spent before a try) fails at once as a timed-out call does
(CallTimeoutError, DEADLINE_EXCEEDED) with ``sent`` False, and never reaches the plugin: a Put with
timeout=0 leaves its key unset. grpcio alone raced the deadline already due against the call: the
plugin sometimes ran it (a Get answered NOT_FOUND, a Put stored) and sometimes it timed out."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests import gobuild
from tests.net_util import Replica
from tests.test_network_pool import replicas  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402
from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402

from plugbay import (AsyncClient, AsyncRemoteClient, AsyncSupervisor, CallTimeoutError, CircuitBreaker,  # noqa: E402
                     Client, ClientConfig, RemoteClient, RemoteConfig, RetryPolicy, Supervisor, install)
from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

CONFIG = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                      cmd=[sys.executable, str(REPO / "examples" / "kv" / "plugin.py")])
ZEROS = [0, 0.0, -0.0, Fraction(0)]


def refused(exc: BaseException, why: str = "timeout=0") -> None:
    assert isinstance(exc, CallTimeoutError) and isinstance(exc, grpc.RpcError), repr(exc)
    assert exc.sent is False, exc  # type: ignore[attr-defined]
    assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    assert why in str(exc) and "did not send it" in str(exc) and "positive timeout=" in str(exc), str(exc)


def unset(kv: Any, key: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        kv.Get(kv_pb2.GetRequest(key=key), timeout=10)
    # the Python plugin answers NOT_FOUND, the Go one its failed file read
    assert info.value.code() == grpc.StatusCode.NOT_FOUND or "no such file" in info.value.details(), info.value


def sync_calls_refused(channel: grpc.Channel, prefix: str = "z") -> None:
    """Every way to make a call with timeout=0: raised at once, the plugin never told (the key stays unset)."""
    kv = kv_pb2_grpc.KVStub(channel)
    watch = health_pb2_grpc.HealthStub(channel).Watch
    for n, zero in enumerate(ZEROS):
        put = kv_pb2.PutRequest(key=f"{prefix}{n}", value=b"1")
        for call in (kv.Put, kv.Put.with_call, kv.Put.future,
                     lambda request, timeout: watch(health_pb2.HealthCheckRequest(), timeout=timeout)):
            with pytest.raises(CallTimeoutError) as info:
                call(put, timeout=zero)
            refused(info.value)
        unset(kv, f"{prefix}{n}")
    kv.Put(kv_pb2.PutRequest(key=f"{prefix}0", value=b"1"), timeout=10)  # a positive timeout is sent as before
    assert kv.Get(kv_pb2.GetRequest(key=f"{prefix}0"), timeout=10).value == b"1"


def test_client_sync(in_tmp: Path) -> None:
    with Client(CONFIG) as client:
        sync_calls_refused(client.channel)


def test_client_with_retry_and_breaker(in_tmp: Path) -> None:
    with Client(CONFIG) as client:
        install(client, retry=RetryPolicy(max_attempts=3, all_idempotent=True), breaker=CircuitBreaker())
        sync_calls_refused(client.channel)


def test_supervisor(in_tmp: Path) -> None:
    with Supervisor(CONFIG, health_interval=None) as sup:
        sync_calls_refused(sup.channel)


def test_go_plugin(in_tmp: Path) -> None:
    reason = gobuild.go_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    config = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                          cmd=[str(gobuild.build_go("kv_plugin"))])
    with Client(config) as client:
        sync_calls_refused(client.channel)
    # the Go plugin stores each key in a file: only the one Put with a positive timeout made one
    assert sorted(p.name for p in in_tmp.glob("kv_*")) == ["kv_z0"]


def test_retry_deadline_spent_before_a_try_is_not_sent(in_tmp: Path) -> None:
    """A retry whose overall deadline was spent (here by an on_retry that sleeps past it) sends no
    further try: grpcio got what was left, a negative timeout, and the plugin could still run it. The
    first try was sent, so the error says so (sent True), raised from that try's NOT_FOUND."""
    with Client(CONFIG) as client:
        kv = kv_pb2_grpc.KVStub(client.channel)

        def late(method: str, attempt: int, error: BaseException, sleep: float) -> None:
            kv.Put(kv_pb2.PutRequest(key="late", value=b"1"), timeout=10)  # a second Get would find it
            time.sleep(1.2)
        install(client, retry=RetryPolicy(max_attempts=2, initial_backoff=0.01, methods=["/proto.KV/Get"],
                                          retry_on=frozenset({grpc.StatusCode.NOT_FOUND}), on_retry=late))
        with pytest.raises(CallTimeoutError) as info:
            kv.Get(kv_pb2.GetRequest(key="late"), timeout=1.0)
        error = info.value
        assert error.sent is True and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error  # type: ignore
        assert "overall deadline of 1s (the call's timeout=) was spent before try 2 of 2" in str(error), error
        assert isinstance(error.__cause__, grpc.RpcError) and error.__cause__.code() == grpc.StatusCode.NOT_FOUND


async def async_calls_refused(channel: Any, prefix: str = "a") -> None:
    kv = kv_pb2_grpc.KVStub(channel)
    watch = health_pb2_grpc.HealthStub(channel).Watch
    for n, zero in enumerate(ZEROS):
        call = kv.Put(kv_pb2.PutRequest(key=f"{prefix}{n}", value=b"1"), timeout=zero)  # no raise until awaited
        with pytest.raises(CallTimeoutError) as info:
            await call
        refused(info.value)
        with pytest.raises(CallTimeoutError) as info:
            async for _ in watch(health_pb2.HealthCheckRequest(), timeout=zero):
                pass
        refused(info.value)
        with pytest.raises(grpc.RpcError) as got:
            await kv.Get(kv_pb2.GetRequest(key=f"{prefix}{n}"), timeout=10)
        assert got.value.code() == grpc.StatusCode.NOT_FOUND


def test_async_client_plain_and_hooked(in_tmp: Path) -> None:
    async def main() -> None:
        async with AsyncClient(CONFIG) as client:
            await async_calls_refused(client.channel)
            install(client, retry=RetryPolicy(max_attempts=3, all_idempotent=True))
            await async_calls_refused(client.channel, "b")
        async with AsyncSupervisor(CONFIG, health_interval=None) as sup:
            await async_calls_refused(sup.channel, "c")
    asyncio.run(main())


def _remote(address: str) -> RemoteConfig:
    return RemoteConfig(target=f"static:///{address}", handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                        insecure=True, call_timeout=10.0)


def test_network_mode(replicas: Callable[..., Replica]) -> None:  # noqa: F811
    address = replicas().address
    with RemoteClient(_remote(address)) as client:
        sync_calls_refused(client.channel)
        for zero in ZEROS:  # the pool itself, a channel of its own
            with pytest.raises(CallTimeoutError) as info:
                client.pool.unary_unary("/proto.KV/Put", kv_pb2.PutRequest.SerializeToString,
                                        kv_pb2.Empty.FromString)(kv_pb2.PutRequest(key="p", value=b"1"), timeout=zero)
            refused(info.value)
        unset(kv_pb2_grpc.KVStub(client.channel), "p")

    async def main() -> None:
        async with AsyncRemoteClient(_remote(address)) as client:
            await async_calls_refused(client.channel)
    asyncio.run(main())
