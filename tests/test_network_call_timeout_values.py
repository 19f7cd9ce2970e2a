"""A call's timeout= straight on a RemoteClient's endpoint pool (client.pool, a pinned endpoint, the grpc.aio
pool of aio_channel()), against a real NetworkServe plugin: checked as a Client's call is. nan, a negative
number or a str is a ConfigError naming timeout=; math.inf or 10**400 means no deadline. The pool used them
raw: nan and math.inf became a deadline already past (DEADLINE_EXCEEDED at once), a pinned stub waited
for ever on nan, -1 ran (sync and asyncio) or failed as a timeout (future), 10**400 was an OverflowError
and "1" a TypeError."""

from __future__ import annotations

import asyncio
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.test_network_serve import NetPlugin

from plugbay import ConfigError
from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.network import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402
from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402

BAD = [math.nan, -1, -math.inf, "1", b"1", True]
NO_LIMIT = [math.inf, 1e300, 10**400]
GET = kv_pb2.GetRequest(key="a")
REFUSED = r"a call's timeout= must be None .* got"


def test_pool_calls_check_timeout_as_a_client_does(tmp_path: Path) -> None:
    plugin = NetPlugin(tmp_path, {"PLUGBAY_NETWORK_LISTEN": "127.0.0.1:0", "PLUGBAY_NETWORK_INSECURE": "1"})
    try:
        with connect(f"static:///{plugin.address}", handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                     insecure=True, name="kv") as client:
            kv_pb2_grpc.KVStub(client.channel).Put(kv_pb2.PutRequest(key="a", value=b"1"), timeout=10)
            key = client.pool.next_key()
            assert key is not None
            for channel in (client.pool, client.pool.pinned(key)):
                kv = kv_pb2_grpc.KVStub(channel)
                watch = health_pb2_grpc.HealthStub(channel).Watch
                for bad in BAD:
                    for call in (kv.Get, kv.Get.with_call, kv.Get.future,
                                 lambda request, timeout: watch(health_pb2.HealthCheckRequest(), timeout=timeout)):
                        with pytest.raises(ConfigError, match=REFUSED):
                            call(GET, timeout=bad)
                for endless in NO_LIMIT:
                    assert kv.Get(GET, timeout=endless).value == b"1"
                    assert kv.Get.with_call(GET, timeout=endless)[0].value == b"1"
                    assert kv.Get.future(GET, timeout=endless).result(10).value == b"1"
                    stream = watch(health_pb2.HealthCheckRequest(service="plugin"), timeout=endless)
                    assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
                    stream.cancel()

            async def on_aio() -> None:
                channel: Any = client.aio_channel()
                try:
                    kv = kv_pb2_grpc.KVStub(channel)
                    watch = health_pb2_grpc.HealthStub(channel).Watch
                    for bad in BAD:
                        with pytest.raises(ConfigError, match=REFUSED):
                            kv.Get(GET, timeout=bad)  # refused when called, as AioManagedChannel's calls
                        with pytest.raises(ConfigError, match=REFUSED):
                            watch(health_pb2.HealthCheckRequest(), timeout=bad)
                    for endless in NO_LIMIT:
                        assert (await kv.Get(GET, timeout=endless)).value == b"1"
                        stream = watch(health_pb2.HealthCheckRequest(service="plugin"), timeout=endless)
                        assert (await stream.read()).status == health_pb2.HealthCheckResponse.SERVING
                        stream.cancel()
                finally:
                    await channel.close()

            asyncio.run(on_aio())
    finally:
        plugin.stop()
