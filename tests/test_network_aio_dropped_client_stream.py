"""A client-streaming (stream-unary) call through the endpoint pool on grpc.aio, dropped before its end, runs to
its end, as a dropped grpc.aio call and an AsyncClient's stream-unary call do: only a call whose answers are a
stream is cancelled when dropped (nobody could read the rest), while a client-streaming call's answer is one
message its requests still lead to. A real net_kv replica on 127.0.0.1 (plugbay.test.Stream/Count answers
"PID:N:m1,m2" for the N messages it got); the collector off, so nothing ends by a collection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from tests.net_util import HANDSHAKE, PLUGINS, Replica, loopback_replica

from plugbay import AsyncRemoteClient, RemoteClient, RemoteConfig

__all__ = ["loopback_replica"]  # the fixture this module's tests take

COUNT = "/plugbay.test.Stream/Count"


def _config(replica: Replica) -> RemoteConfig:
    return RemoteConfig(target=f"static:///{replica.address}", handshake=HANDSHAKE, plugins=PLUGINS, insecure=True,
                        call_timeout=10.0, name="kv-dropped-count")


async def _dropped_count(channel: Any) -> tuple[int, grpc.StatusCode, bytes | None]:
    """A Count call dropped after its first request, before its second: how many times its done callback ran,
    and how the call it was given ended (its answer, if it ended OK)."""
    count = channel.stream_unary(COUNT, request_serializer=lambda m: m, response_deserializer=lambda m: m)
    first_sent, release = asyncio.Event(), asyncio.Event()

    async def requests() -> AsyncIterator[bytes]:
        yield b"a"
        first_sent.set()
        await release.wait()
        yield b"b"

    ended: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    runs: list[int] = []

    def done(call: Any) -> None:  # refers to nothing that holds the call: dropping it drops the call
        runs.append(1)
        if not ended.done():
            ended.set_result(call)

    call = count(requests(), timeout=10)
    call.add_done_callback(done)
    await first_sent.wait()  # the plugin's handler is reading the requests
    del call
    for _ in range(5):  # a few turns of the loop: a cancel scheduled by the drop has run by now
        await asyncio.sleep(0)
    release.set()
    given = await asyncio.wait_for(ended, 10)  # a hang guard only
    code = await given.code()
    return len(runs), code, (await given if code == grpc.StatusCode.OK else None)


def test_a_dropped_aio_channel_client_stream_runs_to_its_end(loopback_replica: Replica, no_gc: None) -> None:
    async def run(client: RemoteClient) -> tuple[int, grpc.StatusCode, bytes | None]:
        channel = client.aio_channel()
        try:
            return await _dropped_count(channel)
        finally:
            await channel.close()

    with RemoteClient(_config(loopback_replica)) as client:
        outcome = asyncio.run(run(client))
    assert outcome == (1, grpc.StatusCode.OK, f"{loopback_replica.proc.pid}:2:a,b".encode()), outcome


def test_a_dropped_async_remote_client_stream_unary_call_runs_to_its_end(
        loopback_replica: Replica, no_gc: None) -> None:
    async def run() -> tuple[int, grpc.StatusCode, bytes | None]:
        async with AsyncRemoteClient(_config(loopback_replica)) as client:
            return await _dropped_count(client.channel)

    outcome = asyncio.run(run())
    assert outcome == (1, grpc.StatusCode.OK, f"{loopback_replica.proc.pid}:2:a,b".encode()), outcome
