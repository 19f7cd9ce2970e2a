"""RemoteClient.aio_channel()'s streams (the pool's own StreamCall, no AsyncClient call around them) end as an
AsyncClient's do: dropped before their end (`async for ...: break` over a temporary, or a variable let go), they
are cancelled then, not when the garbage collector (off here) finds grpc.aio's cycle; and a read after the
`async with` block over one ended raises the same InvalidStateError as an AsyncRemoteClient's stream, not a bare
CancelledError a task nobody cancelled would take for its own; one made off a running loop (grpc.aio allows it)
is read on the loop set. Real network-mode streaming plugins over mTLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from pathlib import Path
from typing import Any

import grpc

from plugbay import AsyncRemoteClient, RemoteClient
from plugbay.network.aiopoolstream import StreamCall
from tests.streamstats import handlers_ended
from tests.test_network_dead_replica import STREAMER, _first_config, certs, streamers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "streaming"))
from streaming_plugin_def import AsyncStreamerClient  # noqa: E402

__all__ = ["certs", "streamers"]  # the fixtures this module's tests take


def test_break_out_of_async_for_over_a_temporary_aio_channel_stream_cancels_it(
        streamers: list[Any], certs: Any, no_gc: None) -> None:
    async def run(client: RemoteClient) -> tuple[int, Any]:
        channel = client.aio_channel()
        streamer = AsyncStreamerClient(channel)
        try:
            async for chunk in streamer.generate(0, 100):  # endless: only a cancel ends it
                if chunk.seq == 2:
                    break
            return chunk.seq, await handlers_ended(streamer)
        finally:
            await channel.close()

    with RemoteClient(_first_config(streamers, certs)) as client:
        last, stats = asyncio.run(run(client))
    assert last == 2
    assert (stats.active, stats.cancelled) == (0, 1), stats


def test_an_aio_channel_stream_kept_in_a_variable_is_cancelled_when_dropped(
        streamers: list[Any], certs: Any, no_gc: None) -> None:
    """A loop left early leaves it where it was (the next one goes on); dropping the variable cancels it."""
    async def run(client: RemoteClient) -> tuple[list[int], Any, Any]:
        channel = client.aio_channel()
        streamer = AsyncStreamerClient(channel)
        try:
            stream = streamer.generate(0, 100)
            assert isinstance(stream, StreamCall)
            seqs = []
            for last in (1, 3):
                async for chunk in stream:
                    seqs.append(chunk.seq)
                    if chunk.seq == last:
                        break
                for _ in range(5):  # a few turns of the loop: asyncio's aclose() of the dropped iterator ran
                    await asyncio.sleep(0)
            running = await streamer.stats()
            del stream
            return seqs, running, await handlers_ended(streamer)
        finally:
            await channel.close()

    with RemoteClient(_first_config(streamers, certs)) as client:
        seqs, running, stats = asyncio.run(run(client))
    assert seqs == [0, 1, 2, 3]
    assert (running.active, running.cancelled) == (1, 0), running
    assert (stats.active, stats.cancelled) == (0, 1), stats


async def _after_the_block(streamer: Any) -> list[BaseException]:
    """What a read() and an `async for` raise after the `async with` block over an endless stream ended it."""
    raised: list[BaseException] = []
    for how in ("read", "iterate"):
        async with streamer.generate(0, 100) as stream:
            await anext(aiter(stream)) if how == "iterate" else await stream.read()
        try:
            await anext(aiter(stream)) if how == "iterate" else await stream.read()
        except BaseException as exc:  # noqa: BLE001 - compared by the caller (a CancelledError is the old way)
            raised.append(exc)
    return raised


def test_a_read_after_async_with_over_an_aio_channel_stream_raises_what_an_async_remote_clients_does(
        streamers: list[Any], certs: Any) -> None:
    async def bare(client: RemoteClient) -> tuple[list[BaseException], Any]:
        channel = client.aio_channel()
        streamer = AsyncStreamerClient(channel)
        try:
            return await _after_the_block(streamer), await handlers_ended(streamer)
        finally:
            await channel.close()

    async def wrapped() -> list[BaseException]:
        async with AsyncRemoteClient(_first_config(streamers, certs)) as client:
            return await _after_the_block(await client.dispense(STREAMER))

    with RemoteClient(_first_config(streamers, certs)) as client:
        raised, stats = asyncio.run(bare(client))
    expected = asyncio.run(wrapped())
    assert [type(e) for e in expected] == [asyncio.InvalidStateError] * 2, expected
    assert [(type(e), str(e)) for e in raised] == [(type(e), str(e)) for e in expected], raised
    assert "`async with`" in str(raised[0]), raised
    assert (stats.active, stats.cancelled) == (0, 2), stats


def _dropped_with_a_done_callback(client: RemoteClient, refers_to_it: bool) -> tuple[Any, list[Any], Any]:
    """An endless aio_channel() stream given a done callback, then dropped (and, when the callback refers to it,
    a collection run): what the plugin ran before, what the callback was given, the stats once handlers ended."""
    async def run() -> tuple[Any, list[Any], Any]:
        channel = client.aio_channel()
        streamer = AsyncStreamerClient(channel)
        try:
            stream = streamer.generate(0, 100)
            assert (await stream.read()).seq == 0
            seen: list[Any] = []
            if refers_to_it:
                stream.add_done_callback(lambda call, held=stream: seen.append((call is held, call.cancelled())))
            else:
                stream.add_done_callback(lambda call: seen.append((isinstance(call, StreamCall), call.cancelled())))
            running = await streamer.stats()
            del stream
            if refers_to_it:
                gc.collect()
            stats = await handlers_ended(streamer)
            for _ in range(5):  # the callbacks run on the loop once the cancel ran there
                await asyncio.sleep(0)
            return running, seen, stats
        finally:
            await channel.close()

    return asyncio.run(run())


def test_an_aio_channel_stream_dropped_with_a_done_callback_is_cancelled(
        streamers: list[Any], certs: Any, no_gc: None) -> None:
    """Its callbacks are held by the stream, not by grpc.aio's call (which its pending status holds until the
    call ends, and with it a callback given the stream): it is cancelled when dropped, the callback given it."""
    with RemoteClient(_first_config(streamers, certs)) as client:
        running, seen, stats = _dropped_with_a_done_callback(client, refers_to_it=False)
    assert (running.active, running.cancelled) == (1, 0), running
    assert (stats.active, stats.cancelled) == (0, 1), stats
    assert seen == [(True, True)], seen


def test_an_aio_channel_stream_whose_done_callback_refers_to_it_is_cancelled_by_a_collection(
        streamers: list[Any], certs: Any) -> None:
    with RemoteClient(_first_config(streamers, certs)) as client:
        running, seen, stats = _dropped_with_a_done_callback(client, refers_to_it=True)
    assert (running.active, running.cancelled) == (1, 0), running
    assert (stats.active, stats.cancelled) == (0, 1), stats
    assert seen == [(True, True)], seen


def test_an_async_remote_client_stream_whose_done_callback_refers_to_it_gives_it_the_pool_stream(
        streamers: list[Any], certs: Any) -> None:
    """The collection clears the weak refs to the pool's StreamCall under the AioCall before their __del__ run;
    the AioCall's __del__ hands its callback to that StreamCall (resurrecting it): the callback is still given
    it, once, on the loop's thread (it was given None), and the stream is cancelled."""
    async def run() -> tuple[Any, list[Any], Any, int]:
        async with AsyncRemoteClient(_first_config(streamers, certs)) as client:
            streamer = await client.dispense(STREAMER)
            stream = streamer.generate(0, 100)
            assert (await stream.read()).seq == 0
            seen: list[Any] = []
            stream.add_done_callback(
                lambda call, held=stream: seen.append((type(call).__name__, threading.get_ident())))
            running = await streamer.stats()
            del stream
            gc.collect()
            stats = await handlers_ended(streamer)
            for _ in range(5):  # the callbacks run on the loop once the cancel ran there
                await asyncio.sleep(0)
            return running, seen, stats, threading.get_ident()

    running, seen, stats, loop_thread = asyncio.run(run())
    assert (running.active, running.cancelled) == (1, 0), running
    assert (stats.active, stats.cancelled) == (0, 1), stats
    assert seen == [("StreamCall", loop_thread)], seen


def test_an_aio_channel_stream_made_off_a_running_loop_is_read_on_the_loop_set(
        streamers: list[Any], certs: Any) -> None:
    """grpc.aio lets a stub be called with no loop running (the thread's event loop set), the call read later
    under run_until_complete; the pool's stream allows it as its unary calls do (it raised 'no running event
    loop' where it is made)."""
    async def read_all(stream: Any) -> list[int]:
        return [chunk.seq async for chunk in stream]

    with RemoteClient(_first_config(streamers, certs)) as client:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            channel = client.aio_channel()
            streamer = AsyncStreamerClient(channel)
            try:
                stats = loop.run_until_complete(streamer.stats())  # a unary call on the same channel, off-loop too
                stream = streamer.generate(3, 8, timeout=10)
                assert isinstance(stream, StreamCall)
                seqs = loop.run_until_complete(read_all(stream))
                code = loop.run_until_complete(stream.code())
            finally:
                loop.run_until_complete(channel.close())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
    assert stats.active == 0, stats
    assert seqs == [0, 1, 2]
    assert code == grpc.StatusCode.OK
