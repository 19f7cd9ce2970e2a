"""cancel() of an asyncio server-streaming call through the pool, as grpc.aio's UnaryStreamCall and the sync
pool stream (plugbay.network.poolstream) have it: before its first answer, before any endpoint took it, once
its call on a killed replica failed unsent (unread), while the read that sends it again picks the next
replica, and after that resend answered. Its read raises asyncio.CancelledError, code() says CANCELLED,
nothing is sent again, and no call, task or endpoint's in-flight count is left behind.
Real network-mode streaming plugins over mTLS on 127.0.0.1, one of them killed (kill -9) where it says so.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import grpc

from plugbay import AsyncRemoteClient, RemoteClient, RemoteConfig
from plugbay.network.aiopoolstream import StreamCall
from tests.streamstats import handlers_ended, refused_both_ways
from tests.test_network_dead_replica import (STREAM_HANDSHAKE, STREAMER, StreamerPlugin, _first_config, _inner,
                                             _kill, _stream_after_kill, certs, held_resend_pick, host_tls, streamers)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "streaming"))
from streaming_plugin_def import AsyncStreamerClient  # noqa: E402

__all__ = ["certs", "streamers"]  # the fixtures this module's tests take

LOCAL = "Locally cancelled by application!"  # grpc.aio's details of a call its caller cancelled


async def _seen(stream: Any) -> dict[str, Any]:
    """What the stream says of itself, and what reading it raises."""
    seen: dict[str, Any] = {"done": stream.done(), "cancelled": stream.cancelled()}
    try:
        seen["read"] = [c.seq async for c in stream]
    except asyncio.CancelledError:
        seen["read"] = "CancelledError"
    seen["code"], seen["details"] = await stream.code(), await stream.details()
    return seen


def _endpoints(stream: Any) -> Any:
    """The pool's endpoints (their grpc.aio calls in flight) under an AsyncRemoteClient's stream."""
    return _inner(stream, StreamCall)._callable.channel.endpoints


async def _nothing_left(client: Any, endpoints: Any) -> None:
    """No call in flight on the pool's ``endpoints`` (see _endpoints) or the pool; no task left running. The
    cancelled calls' done callbacks and grpc.aio's own status tasks end on the loop, later under load: asked
    again until all is clear (the bound, about 10 s, is a hang guard only)."""
    mine = asyncio.current_task()
    for _ in range(200):
        inflight = {k: e["inflight"] for k, e in client.metrics()["endpoints"].items()}
        tasks = [t for t in asyncio.all_tasks() if t is not mine and "_watch_pool" not in repr(t.get_coro())]
        if not endpoints._calls and set(inflight.values()) == {0} and not tasks:
            return
        await asyncio.sleep(0.05)
    assert not endpoints._calls, endpoints._calls
    assert set(inflight.values()) == {0}, inflight
    assert not tasks, tasks


CANCELLED = {"read": "CancelledError", "code": grpc.StatusCode.CANCELLED, "details": LOCAL}


def test_a_stream_cancelled_before_its_first_answer_is_cancelled(streamers: list[Any], certs: Any) -> None:
    """A regression guard: this behaviour was already right before the pool stream's cancel() was mended."""
    async def run() -> tuple[bool, dict[str, Any]]:
        async with AsyncRemoteClient(_first_config(streamers, certs)) as client:
            streamer = await client.dispense(STREAMER)
            stream = streamer.generate(3, 8, timeout=10)
            asked = stream.cancel()
            seen = await _seen(stream)
            await _nothing_left(client, _endpoints(stream))
            return asked, seen

    assert asyncio.run(run()) == (True, {"done": True, "cancelled": True, **CANCELLED})


def test_a_stream_cancelled_while_it_waits_for_an_endpoint_is_cancelled_at_once(
        streamers: list[Any], certs: Any) -> None:
    """No replica is up when the stream is made: it waits for one (a task), which cancel() ends. done() and
    cancelled() say so from cancel() on, and details() are grpc.aio's for a cancel."""
    target = ",".join(r.address for r in streamers)
    cfg = RemoteConfig(target=f"static:///{target}", handshake=STREAM_HANDSHAKE, plugins={STREAMER: StreamerPlugin()},
                       tls=host_tls(certs), name="streamer", health_interval=0.2, health_timeout=1.0, start_timeout=20)

    async def run() -> tuple[bool, dict[str, Any]]:
        async with AsyncRemoteClient(cfg) as client:
            streamer = await client.dispense(STREAMER)
            for replica in streamers:
                _kill(replica)
            for _ in range(300):  # the health checks, every 0.2 s, see both gone; bounded at about 30 s
                if client.metrics()["available"] == 0:
                    break
                await asyncio.sleep(0.1)
            assert client.metrics()["available"] == 0, client.metrics()
            stream = streamer.generate(3, 8, timeout=10)
            assert not stream.done()
            asked = stream.cancel()
            seen = await _seen(stream)
            await _nothing_left(client, _endpoints(stream))
            return asked, seen

    assert asyncio.run(run()) == (True, {"done": True, "cancelled": True, **CANCELLED})


def test_a_stream_cancelled_after_its_call_failed_unsent_says_cancelled(streamers: list[Any], certs: Any) -> None:
    """As the sync stream: cancel() comes after the call ended (False, and that call was not cancelled), but
    it keeps the stream from being sent again, so the stream ends cancelled: its read and code() say so."""
    live = f"tcp:{streamers[1].address}"

    async def run() -> tuple[bool, dict[str, Any], int]:
        async with AsyncRemoteClient(_first_config(streamers, certs)) as client:
            streamer = await client.dispense(STREAMER)
            await streamer.stats()  # the channel to the first replica is made
            picks = client.metrics()["endpoints"][live]["picks"]
            stream = await _stream_after_kill(client, streamer, streamers[0])
            asked = stream.cancel()
            seen = await _seen(stream)
            await _nothing_left(client, _endpoints(stream))
            return asked, seen, client.metrics()["endpoints"][live]["picks"] - picks

    assert asyncio.run(run()) == (False, {"done": True, "cancelled": False, **CANCELLED}, 0)


def test_a_cancel_while_the_resend_picks_ends_the_read_and_the_pick(streamers: list[Any], certs: Any) -> None:
    """The resend's pick is held (as the pool holds it while no endpoint can take the call): cancel() ends the
    read at once, as grpc.aio's cancel() ends a read, and the pick with it; nothing is sent again. The stream
    was under way (being sent again), so cancel() says True and cancelled() too, as grpc.aio's call would."""
    live = f"tcp:{streamers[1].address}"

    async def run() -> tuple[bool, dict[str, Any], dict[str, Any], bool, int]:
        async with AsyncRemoteClient(_first_config(streamers, certs)) as client:
            streamer = await client.dispense(STREAMER)
            await streamer.stats()  # the channel to the first replica is made
            picks = client.metrics()["endpoints"][live]["picks"]
            stream = await _stream_after_kill(client, streamer, streamers[0])
            with held_resend_pick(stream) as (picking, go_on, ended):
                reading = asyncio.ensure_future(stream.read())
                await asyncio.wait_for(picking.wait(), 10)
                asked = stream.cancel()
                assert stream.cancel() is False  # a second cancel() cancels nothing, as gRPC's says
                during = {"done": stream.done(), "code": await stream.code(), "details": await stream.details()}
                try:
                    read: Any = (await asyncio.wait_for(reading, 20)).seq
                except asyncio.CancelledError:
                    read = "CancelledError"
                held_open = not go_on.is_set()  # the read ended with the pick still held
            seen = await _seen(stream)
            await _nothing_left(client, _endpoints(stream))
            return (asked, during, {**seen, "first read": read}, ended.is_set() and held_open,
                    client.metrics()["endpoints"][live]["picks"] - picks)

    asked, during, seen, pick_ended, resent = asyncio.run(run())
    assert during == {"done": True, "code": grpc.StatusCode.CANCELLED, "details": LOCAL}, during
    assert seen == {"done": True, "cancelled": True, "first read": "CancelledError", **CANCELLED}, seen
    assert (asked, pick_ended, resent) == (True, True, 0)  # it cancelled the stream, under way again


def test_a_stream_cancelled_after_its_resend_answered_is_cancelled(streamers: list[Any], certs: Any) -> None:
    """A regression guard: this behaviour was already right before the pool stream's cancel() was mended."""
    async def run() -> tuple[int, bool, dict[str, Any]]:
        async with AsyncRemoteClient(_first_config(streamers, certs)) as client:
            streamer = await client.dispense(STREAMER)
            await streamer.stats()  # the channel to the first replica is made
            stream = await _stream_after_kill(client, streamer, streamers[0])
            first = (await stream.read()).seq  # from the live replica
            asked = stream.cancel()
            seen: dict[str, Any] = {"done": stream.done(), "cancelled": stream.cancelled()}
            try:
                seen["read"] = (await stream.read()).seq
            except asyncio.CancelledError:
                seen["read"] = "CancelledError"
            seen["code"], seen["details"] = await stream.code(), await stream.details()
            await _nothing_left(client, _endpoints(stream))
            return first, asked, seen

    assert asyncio.run(run()) == (0, True, {"done": True, "cancelled": True, **CANCELLED})


def test_a_cancel_after_a_read_raised_the_failure_leaves_the_status(streamers: list[Any], certs: Any) -> None:
    """Both replicas killed: the read (sent again to the second) raises UNAVAILABLE, as code() says; a cancel()
    after that finds the call ended (False) and changes nothing, as a finished grpc.aio call's status stands:
    a next read raises the same failure."""
    async def run() -> tuple[Any, Any, bool, Any]:
        async with AsyncRemoteClient(_first_config(streamers, certs)) as client:
            streamer = await client.dispense(STREAMER)
            await streamer.stats()  # the channel to the first replica is made
            _kill(streamers[1])
            stream = await _stream_after_kill(client, streamer, streamers[0])
            try:
                read: Any = (await stream.read()).seq
            except grpc.RpcError as exc:
                read = exc.code()
            status = (await stream.code(), await stream.details())
            asked = stream.cancel()
            try:
                again: Any = (await stream.read()).seq
            except grpc.RpcError as exc:  # the same failure, as a finished grpc.aio call's read raises it
                again = exc.code()
            after = (stream.cancelled(), again, await stream.code(), await stream.details())
            await _nothing_left(client, _endpoints(stream))
            return read, status, asked, after

    read, status, asked, after = asyncio.run(run())
    assert read == status[0] == grpc.StatusCode.UNAVAILABLE, (read, status)
    assert (asked, after) == (False, (False, read, *status)), (asked, after)


def test_a_cancel_as_the_resends_pick_ends_sends_nothing_again(streamers: list[Any], certs: Any) -> None:
    """cancel() once the resend's pick found an endpoint, before the read went on with it: the stream was under
    way, so cancel() says True (and cancelled() too); nothing is sent to that endpoint, which is given back."""
    async def run() -> tuple[list[bool], Any, list[str], dict[str, Any]]:
        async with AsyncRemoteClient(_first_config(streamers, certs)) as client:
            streamer = await client.dispense(STREAMER)
            await streamer.stats()  # the channel to the first replica is made
            stream = await _stream_after_kill(client, streamer, streamers[0])
            callable = _inner(stream, StreamCall)._callable
            real_pick, real_start = callable.pick, callable.start
            said: list[bool] = []
            started: list[str] = []

            async def pick(pick_until: float, tried: set[str]) -> Any:
                member = await real_pick(pick_until, tried)
                if tried:  # the resend's: cancel() runs as this pick's task ends, before the read goes on
                    asyncio.get_running_loop().call_soon(lambda: said.append(stream.cancel()))
                return member

            def start(member: Any, *args: Any) -> Any:
                started.append(member.key)
                return real_start(member, *args)

            callable.pick, callable.start = pick, start
            try:
                read: Any = (await asyncio.wait_for(stream.read(), 20)).seq
            except asyncio.CancelledError:
                read = "CancelledError"
            finally:
                del callable.pick, callable.start
            seen = await _seen(stream)
            await _nothing_left(client, _endpoints(stream))
            return said, read, started, seen

    said, read, started, seen = asyncio.run(run())
    assert (said, read, started) == ([True], "CancelledError", []), (said, read, started)
    assert seen == {"done": True, "cancelled": True, **CANCELLED}, seen


def test_a_read_whose_task_is_cancelled_during_the_resends_pick_cancels_the_stream(
        streamers: list[Any], certs: Any) -> None:
    """The caller's task is cancelled while its read picks the endpoint to send the stream to again: the stream
    is cancelled, as grpc.aio cancels a call whose read's task is, and no later read sends it again."""
    live = f"tcp:{streamers[1].address}"

    async def run() -> tuple[dict[str, Any], int]:
        async with AsyncRemoteClient(_first_config(streamers, certs)) as client:
            streamer = await client.dispense(STREAMER)
            await streamer.stats()  # the channel to the first replica is made
            picks = client.metrics()["endpoints"][live]["picks"]
            stream = await _stream_after_kill(client, streamer, streamers[0])
            with held_resend_pick(stream) as (picking, go_on, _):
                reading = asyncio.ensure_future(stream.read())
                await asyncio.wait_for(picking.wait(), 10)
                reading.cancel()
                try:
                    await reading
                except asyncio.CancelledError:
                    pass
                go_on.set()  # a later read's resend would pick at once
                seen = await _seen(stream)
            await _nothing_left(client, _endpoints(stream))
            return seen, client.metrics()["endpoints"][live]["picks"] - picks

    assert asyncio.run(run()) == ({"done": True, "cancelled": True, **CANCELLED}, 0)


def test_break_out_of_async_for_over_a_temporary_pool_stream_ends_the_replicas_handler(
        streamers: list[Any], certs: Any, no_gc: None) -> None:
    """The stream a temporary, dropped after the loop left it: the call is cancelled then, not when the garbage
    collector (off here) finds grpc.aio's call, which holds itself in a cycle."""
    async def run() -> tuple[int, Any]:
        async with AsyncRemoteClient(_first_config(streamers, certs)) as client:
            streamer = await client.dispense(STREAMER)
            read_out = streamer.generate(1, 8)  # read to its end: it only shows the pool's endpoints
            endpoints = _endpoints(read_out)
            assert [c.seq async for c in read_out] == [0]
            del read_out
            async for chunk in streamer.generate(0, 100):  # endless: only a cancel ends it
                if chunk.seq == 2:
                    break
            stats = await handlers_ended(streamer)
            await _nothing_left(client, endpoints)
            return chunk.seq, stats

    last, stats = asyncio.run(run())
    assert last == 2
    assert (stats.active, stats.cancelled) == (0, 1), stats


def test_break_then_a_second_async_for_over_a_pool_stream_goes_on(streamers: list[Any], certs: Any,
                                                                  no_gc: None) -> None:
    """A pool stream kept in a variable: a loop left early leaves it where it was (asyncio closes only that
    loop's iterator), the next `async for` goes on from there; dropping the stream cancels it."""
    async def run() -> tuple[list[int], Any, Any]:
        async with AsyncRemoteClient(_first_config(streamers, certs)) as client:
            streamer = await client.dispense(STREAMER)
            stream = streamer.generate(0, 100)
            endpoints = _endpoints(stream)
            seqs = []
            async for chunk in stream:
                seqs.append(chunk.seq)
                if chunk.seq == 2:
                    break
            for _ in range(5):  # a few turns of the loop: asyncio's aclose() of the dropped iterator has run
                await asyncio.sleep(0)
            async for chunk in stream:
                seqs.append(chunk.seq)
                if chunk.seq == 6:
                    break
            running = await streamer.stats()
            del stream
            stats = await handlers_ended(streamer)
            await _nothing_left(client, endpoints)
            return seqs, running, stats

    seqs, running, stats = asyncio.run(run())
    assert seqs == list(range(7))
    assert (running.active, running.cancelled) == (1, 0), running
    assert (stats.active, stats.cancelled) == (0, 1), stats


def test_async_with_on_a_stream_of_a_killed_remote_client_raises_its_error_at_the_first_read(
        streamers: list[Any], certs: Any) -> None:
    """The call is refused, unsent: `async with` takes it and its first read raises the refusal, as the first
    step of an `async for` over it does (before: TypeError, the refused call was no context manager)."""
    async def run() -> tuple[BaseException, BaseException]:
        async with AsyncRemoteClient(_first_config(streamers, certs)) as client:
            return await refused_both_ways(client, await client.dispense(STREAMER))

    iterated, read = asyncio.run(run())
    assert type(read) is type(iterated) and str(read) == str(iterated), (read, iterated)
    assert "killed" in str(read) or "closed" in str(read), read


def test_leaving_async_with_over_a_stream_of_the_pools_aio_channel_cancels_it(streamers: list[Any],
                                                                              certs: Any) -> None:
    """RemoteClient.aio_channel()'s streams are the pool's own (no AsyncClient's call around them): `async with`
    takes them (before: TypeError) and cancels the stream at the block's end; one read to its end is left be."""
    async def run(client: RemoteClient) -> tuple[Any, list[int], Any, Any]:
        channel = client.aio_channel()
        streamer = AsyncStreamerClient(channel)
        try:
            async with streamer.generate(0, 100) as stream:
                assert isinstance(stream, StreamCall)
                first = (await stream.read()).seq
            cancelled = await handlers_ended(streamer)
            async with streamer.generate(3, 8) as ended:
                seqs = [c.seq async for c in ended]
            return (first, await stream.code()), seqs, cancelled, await handlers_ended(streamer)
        finally:
            await channel.close()

    with RemoteClient(_first_config(streamers, certs)) as client:
        first, seqs, cancelled, stats = asyncio.run(run(client))
    assert first == (0, grpc.StatusCode.CANCELLED) and seqs == [0, 1, 2]
    assert (cancelled.active, cancelled.cancelled) == (0, 1), cancelled
    assert (stats.active, stats.cancelled) == (0, 1), stats
