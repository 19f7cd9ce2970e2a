"""A pool stream (RemoteClient.aio_channel(), plugbay.network.aiopoolstream) whose call failed, dropped while the
error's traceback holds it in a cycle, gives its client's descriptors back at the first collection: its grpc.aio
call, that call's channel and, with the last grpc.aio channel, grpc.aio's poller and its socket pair; bare, with a
done callback, and under an AsyncRemoteClient's AioCall. An AioCall with a __del__ of its own once outlived the
collection at a test run's end so (plugbay.core.host.aiocall._HandOver); the pool stream keeps a __del__ (it gives
itself to its done callbacks), which must never keep it past one collection: a finalizer that does fails these
tests (checked by hand). The collector is off (no_gc): the one collection is the test's own. Real network-mode
streaming plugins over mTLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gc
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugbay import AsyncRemoteClient, RemoteClient
from plugbay.network.aiopoolstream import StreamCall
from tests.leakcheck import _descriptors
from tests.test_network_dead_replica import STREAMER, _first_config, certs, streamers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "streaming"))
from streaming_plugin_def import AsyncStreamerClient  # noqa: E402

__all__ = ["certs", "streamers"]  # the fixtures this module's tests take


def _opened_since(before: dict[int, str]) -> dict[int, str]:
    """Descriptors open now that were not at ``before``, once those closing without a collection closed: grpc
    closes a connection's socket on its own threads, after close() returned (at most about 10 s here: a hang
    guard; what a second collection alone would free stays open however long this waits)."""
    for _ in range(100):
        opened = {fd: target for fd, target in _descriptors().items() if before.get(fd) != target}
        if not opened:
            break
        time.sleep(0.1)
    return opened


async def _fail_and_drop(client: RemoteClient, callback: bool) -> tuple[grpc.StatusCode, weakref.ref[StreamCall]]:
    """An endless stream read until its deadline failed it; the error kept in this frame, which its traceback
    holds: the stream is left in that cycle, reachable from nothing else, as the coroutine returns."""
    channel = client.aio_channel()
    streamer = AsyncStreamerClient(channel)
    try:
        stream = streamer.generate(0, 100, timeout=0.5)
        assert isinstance(stream, StreamCall)
        if callback:  # held by the stream (aiocall.HeldCallbacks), given it as the call ends
            stream.add_done_callback(lambda call: None)
        return await _read_to_its_failure(stream), weakref.ref(stream)
    finally:
        await channel.close()


@pytest.mark.parametrize("callback", [False, True], ids=["bare", "with-done-callback"])
def test_a_dropped_failed_pool_stream_gives_its_descriptors_back_at_the_first_collection(
        streamers: list[Any], certs: Any, no_gc: None, callback: bool) -> None:
    with RemoteClient(_first_config(streamers, certs)) as client:
        for _ in range(3):  # what earlier tests left for the collector goes first: it is not this test's
            gc.collect()
        before = _descriptors()
        code, stream = asyncio.run(_fail_and_drop(client, callback))
        held = {fd: target for fd, target in _descriptors().items() if before.get(fd) != target}
        kept = stream() is not None  # by the cycle: else this test would tell nothing
        gc.collect()  # (its weak ref is cleared by it, whether or not a finalizer then keeps the stream)
        left = _opened_since(before)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert kept, "the dropped stream was freed without a collection: no cycle held it"
    assert left == {}, f"still open after one collection: {left} (before it: {held})"


async def _read_to_its_failure(stream: Any) -> grpc.StatusCode:
    """Reads an endless stream until its deadline fails it; the failure's code (its error stays in this frame's
    traceback, the cycle the tests need)."""
    failed: grpc.RpcError | None = None
    try:
        async for _ in stream:
            pass
    except grpc.RpcError as exc:
        failed = exc
    assert failed is not None, "an endless stream ended without its deadline's error"
    return failed.code()


async def _fail_and_drop_wrapped(config: Any) -> tuple[grpc.StatusCode, weakref.ref[StreamCall]]:
    """As _fail_and_drop, through an AsyncRemoteClient: its AioCall around the pool's stream."""
    async with AsyncRemoteClient(config) as client:
        streamer = await client.dispense(STREAMER)
        stream = streamer.generate(0, 100, timeout=0.5)
        pool_stream = stream._call
        assert isinstance(pool_stream, StreamCall)
        return await _read_to_its_failure(stream), weakref.ref(pool_stream)


def test_a_dropped_failed_async_remote_client_stream_gives_its_descriptors_back_at_the_first_collection(
        streamers: list[Any], certs: Any, no_gc: None) -> None:
    for _ in range(3):
        gc.collect()
    before = _descriptors()
    code, stream = asyncio.run(_fail_and_drop_wrapped(_first_config(streamers, certs)))
    held = {fd: target for fd, target in _descriptors().items() if before.get(fd) != target}
    kept = stream() is not None
    gc.collect()
    left = _opened_since(before)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert kept, "the dropped stream was freed without a collection: no cycle held it"
    assert left == {}, f"still open after one collection: {left} (before it: {held})"
