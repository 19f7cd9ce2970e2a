"""An AsyncClient's server stream ends when nobody can read it any more, as a Python generator is closed when
dropped: `async for chunk in stub.Generate(request): break` (the call a temporary, dropped after the loop) cancels
the call then, and the plugin's handler sees it without waiting for the garbage collector (grpc.aio's call holds
itself in a cycle). A stream kept in a variable is not: a loop over it that ended early (break, or a peek with
anext()) leaves it where it was, and the next `async for` goes on from there, as grpc.aio's does; dropping it
cancels it. Leaving an `async with` block around the call cancels it too, and a later read says why the stream
ended, not a bare CancelledError a task nobody cancelled would take for its own. The real streaming example
plugin; the collector off (no_gc), so what ends a call is plugbay's own doing."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

from grpc.aio import Call


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "streaming"))

from streaming_plugin_def import HANDSHAKE, PLUGIN_NAME, StreamerPlugin  # noqa: E402

from plugbay import AsyncClient, ClientConfig  # noqa: E402
from tests.streamstats import handlers_ended, refused_both_ways  # noqa: E402

CONFIG = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: StreamerPlugin()},
                      cmd=[sys.executable, str(REPO / "examples" / "streaming" / "plugin.py")])


async def _iterators_closed() -> None:
    """A few turns of the loop: asyncio closes a dropped iterator of a loop left early (its aclose()) on a later
    turn; it has run by then (a call_soon_threadsafe that creates the closing task, which then runs)."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_break_out_of_async_for_over_a_temporary_stream_cancels_it(no_gc: None) -> None:
    async def main() -> tuple[int, Any]:
        async with AsyncClient(CONFIG) as client:
            streamer = await client.dispense(PLUGIN_NAME)
            async for chunk in streamer.generate(0, 100):  # endless: only a cancel ends it
                if chunk.seq == 2:
                    break
            return chunk.seq, await handlers_ended(streamer)

    last, stats = asyncio.run(main())
    assert last == 2
    assert (stats.active, stats.cancelled) == (0, 1), stats


def test_a_peek_then_an_async_for_gets_every_item(no_gc: None) -> None:
    async def main() -> tuple[int, list[int], Any, Any]:
        async with AsyncClient(CONFIG) as client:
            streamer = await client.dispense(PLUGIN_NAME)
            stream = streamer.generate(0, 100)  # endless: only a cancel ends it
            first = (await anext(aiter(stream))).seq  # that iterator dropped at once
            await _iterators_closed()
            seqs = []
            async for chunk in stream:
                seqs.append(chunk.seq)
                if chunk.seq == 5:
                    break
            running = await streamer.stats()  # kept in a variable: the stream goes on
            del stream  # nobody can read it now: cancelled
            return first, seqs, running, await handlers_ended(streamer)

    first, seqs, running, stats = asyncio.run(main())
    assert (first, seqs) == (0, [1, 2, 3, 4, 5])
    assert (running.active, running.cancelled) == (1, 0), running
    assert (stats.active, stats.cancelled) == (0, 1), stats


def test_break_then_a_second_async_for_goes_on_where_the_first_left(no_gc: None) -> None:
    async def main() -> tuple[list[int], Any]:
        async with AsyncClient(CONFIG) as client:
            streamer = await client.dispense(PLUGIN_NAME)
            stream = streamer.generate(0, 100)
            seqs = []
            async for chunk in stream:
                seqs.append(chunk.seq)
                if chunk.seq == 2:
                    break
            await _iterators_closed()
            async for chunk in stream:
                seqs.append(chunk.seq)
                if chunk.seq == 6:
                    break
            stream.cancel()
            return seqs, await handlers_ended(streamer)

    seqs, stats = asyncio.run(main())
    assert seqs == list(range(7))
    assert (stats.active, stats.cancelled) == (0, 1), stats


def test_leaving_async_with_cancels_the_stream(no_gc: None) -> None:
    async def main() -> tuple[Any, Any, BaseException | None]:
        async with AsyncClient(CONFIG) as client:
            streamer = await client.dispense(PLUGIN_NAME)
            async with streamer.generate(0, 100) as stream:
                assert (await stream.read()).seq == 0
            stats = await handlers_ended(streamer)
            try:
                await stream.read()
                later: BaseException | None = None
            except BaseException as exc:  # noqa: BLE001 - what a read after the block raises, judged below
                later = exc
            return stats, await stream.code(), later

    stats, code, later = asyncio.run(main())
    assert (stats.active, stats.cancelled) == (0, 1), stats
    assert code.name == "CANCELLED"
    assert isinstance(later, asyncio.InvalidStateError) and "`async with` block" in str(later), repr(later)


def test_a_stream_read_to_its_end_is_not_cancelled(no_gc: None) -> None:
    async def main() -> tuple[list[int], Any, Any]:
        async with AsyncClient(CONFIG) as client:
            streamer = await client.dispense(PLUGIN_NAME)
            async with streamer.generate(3, 10) as stream:
                seqs = [chunk.seq async for chunk in stream]
            return seqs, await stream.code(), await handlers_ended(streamer)

    seqs, code, stats = asyncio.run(main())
    assert seqs == [0, 1, 2] and code.name == "OK"
    assert (stats.active, stats.cancelled) == (0, 0), stats


def test_async_with_on_a_stream_of_a_killed_client_raises_its_error_at_the_first_read() -> None:
    """The call is refused (nothing sent): `async with` takes it, and its first read raises the refusal, as the
    first step of an `async for` over it does."""
    async def main() -> tuple[BaseException, BaseException]:
        async with AsyncClient(CONFIG) as client:
            return await refused_both_ways(client, await client.dispense(PLUGIN_NAME))

    iterated, read = asyncio.run(main())
    assert type(read) is type(iterated) and str(read) == str(iterated), (read, iterated)
    assert "killed" in str(read) or "closed" in str(read), read


def test_a_stream_dropped_on_another_thread_is_cancelled_on_its_loop(no_gc: None) -> None:
    """The last reference may go on any thread: the cancel runs on the call's loop, as grpc.aio needs."""
    async def main() -> tuple[Any, Any]:
        async with AsyncClient(CONFIG) as client:
            streamer = await client.dispense(PLUGIN_NAME)
            kept = [streamer.generate(0, 100)]
            assert (await kept[0].read()).seq == 0
            running = await streamer.stats()
            stream = weakref.ref(kept[0])
            await asyncio.to_thread(kept.clear)
            assert stream() is None, "the stream outlived its drop on the thread: it was not the last reference"
            return running, await handlers_ended(streamer)

    running, stats = asyncio.run(main())
    assert (running.active, running.cancelled) == (1, 0), running
    assert (stats.active, stats.cancelled) == (0, 1), stats


def test_a_stream_dropped_after_its_loop_closed_is_left_quietly(no_gc: None) -> None:
    """Its loop closed (the client's connection with it): nothing to cancel, and no error from the drop."""
    async def main() -> Any:
        async with AsyncClient(CONFIG) as client:
            streamer = await client.dispense(PLUGIN_NAME)
            stream = streamer.generate(0, 100)
            assert (await stream.read()).seq == 0
            return stream

    kept = [asyncio.run(main())]
    unraisable: list[Any] = []
    was, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        kept.clear()
    finally:
        sys.unraisablehook = was
    assert unraisable == []


def test_a_dropped_stream_whose_done_callback_refers_to_it_is_cancelled_by_a_collection() -> None:
    """The callback and the stream are a cycle: the collector ends it (as any cycle), and the call is cancelled
    then; its callbacks still run, given the call. They used to be held by grpc.aio's call, which its pending
    status holds until the call ends: an endless stream ran on for the process's life, whatever collected."""
    async def main() -> tuple[Any, list[tuple[bool, bool]], Any]:
        async with AsyncClient(CONFIG) as client:
            streamer = await client.dispense(PLUGIN_NAME)
            stream = streamer.generate(0, 100)  # endless: only a cancel ends it
            assert (await stream.read()).seq == 0
            seen: list[tuple[bool, bool]] = []
            stream.add_done_callback(lambda call, held=stream: seen.append((held is not None, call.cancelled())))
            running = await streamer.stats()
            del stream
            gc.collect()
            stats = await handlers_ended(streamer)
            await _iterators_closed()  # the callbacks run on the loop once the cancel ran there
            return running, seen, stats

    running, seen, stats = asyncio.run(main())
    assert (running.active, running.cancelled) == (1, 0), running
    assert (stats.active, stats.cancelled) == (0, 1), stats
    assert seen == [(True, True)], seen


def test_a_done_callback_of_a_stream_kept_runs_when_it_ends(no_gc: None) -> None:
    """A regression guard: held by the stream itself, a callback runs once the call ends, given grpc.aio's call,
    as grpc.aio's callbacks do; one added after the end runs at once."""
    async def main() -> list[tuple[str, bool, bool]]:
        async with AsyncClient(CONFIG) as client:
            streamer = await client.dispense(PLUGIN_NAME)
            stream = streamer.generate(2, 10)
            seen: list[tuple[str, bool, bool]] = []
            stream.add_done_callback(lambda call: seen.append(("first", isinstance(call, Call), call.done())))
            assert [chunk.seq async for chunk in stream] == [0, 1]
            await _iterators_closed()
            stream.add_done_callback(lambda call: seen.append(("after", isinstance(call, Call), call.done())))
            return seen

    assert asyncio.run(main()) == [("first", True, True), ("after", True, True)]


def test_a_stream_finalized_before_its_weak_references_go_is_cancelled_all_the_same(no_gc: None) -> None:
    """A stream whose done callback refers to it, its __del__ run while its weak references still live (the order
    another Python's collector may take; CPython's runs the weakref callbacks, the drop-cancel among them, first):
    __del__ cancels the call as it hands the callbacks over, so they, which keep the stream alive, do not keep
    the call alive too. The callback runs once, on the loop's thread."""
    async def main() -> tuple[Any, list[tuple[int, bool]], Any, int]:
        async with AsyncClient(CONFIG) as client:
            streamer = await client.dispense(PLUGIN_NAME)
            stream = streamer.generate(0, 100)  # endless: only a cancel ends it
            assert (await stream.read()).seq == 0
            seen: list[tuple[int, bool]] = []
            stream.add_done_callback(
                lambda call, held=stream: seen.append((threading.get_ident(), call.cancelled())))
            running = await streamer.stats()
            stream.__del__()  # finalized first, as a collection elsewhere may; its drop-cancel not yet run
            del stream
            stats = await handlers_ended(streamer)
            await _iterators_closed()  # the callbacks run on the loop once the cancel ran there
            return running, seen, stats, threading.get_ident()

    running, seen, stats, loop_thread = asyncio.run(main())
    assert (running.active, running.cancelled) == (1, 0), running
    assert (stats.active, stats.cancelled) == (0, 1), stats
    assert seen == [(loop_thread, True)], seen


async def _drop_on(where: str, holder: list[Any]) -> None:
    """Drop the stream ``holder`` holds, its last reference: here (on the loop) or on another thread; it is gone
    right after (freed where it was dropped, not later by someone else's reference)."""
    stream = weakref.ref(holder[0])
    if where == "loop":
        holder.clear()
    else:
        dropped_on = await asyncio.to_thread(lambda: (holder.clear(), threading.get_ident())[1])
        assert dropped_on != threading.get_ident()
    assert stream() is None, "the stream outlived its drop: it was not the last reference"


def _dropped_with_a_callback(where: str) -> tuple[Any, list[tuple[int, bool]], Any, int]:
    async def main() -> tuple[Any, list[tuple[int, bool]], Any, int]:
        async with AsyncClient(CONFIG) as client:
            streamer = await client.dispense(PLUGIN_NAME)
            holder = [streamer.generate(0, 100)]  # endless: only a cancel ends it
            assert (await holder[0].read()).seq == 0
            seen: list[tuple[int, bool]] = []
            holder[0].add_done_callback(lambda call: seen.append((threading.get_ident(), call.cancelled())))
            running = await streamer.stats()
            await _drop_on(where, holder)
            stats = await handlers_ended(streamer)
            await _iterators_closed()  # the callbacks run on the loop once the cancel ran there
            return running, seen, stats, threading.get_ident()

    return asyncio.run(main())


def test_a_stream_dropped_with_a_done_callback_is_cancelled_and_the_callback_runs_once(no_gc: None) -> None:
    """The callback does not refer to the stream: the drop frees it at once (its reference count), no collection."""
    running, seen, stats, loop_thread = _dropped_with_a_callback("loop")
    assert (running.active, running.cancelled) == (1, 0), running
    assert (stats.active, stats.cancelled) == (0, 1), stats
    assert seen == [(loop_thread, True)], seen


def test_a_stream_dropped_on_another_thread_runs_its_callback_once_on_the_loops_thread(no_gc: None) -> None:
    running, seen, stats, loop_thread = _dropped_with_a_callback("thread")
    assert (running.active, running.cancelled) == (1, 0), running
    assert (stats.active, stats.cancelled) == (0, 1), stats
    assert seen == [(loop_thread, True)], seen


def test_awaiting_a_stream_is_the_type_error_grpc_aio_gives(no_gc: None) -> None:
    # a stream is read with `async for` or read(), not awaited: grpc.aio's own stream call says so with a TypeError
    # ("can't be used in 'await' expression"); a rewrite of the unary await as one generator made it an
    # AttributeError about a missing __await__ (found in review)
    async def main() -> tuple[BaseException, Any]:
        async with AsyncClient(CONFIG) as client:
            streamer = await client.dispense(PLUGIN_NAME)
            stream = streamer.generate(0, 3)
            try:
                await stream
            except Exception as exc:  # noqa: BLE001 - which error it is, is the point
                error: BaseException = exc
            else:
                raise AssertionError("awaiting a stream did not fail")
            stream.cancel()
            return error, await handlers_ended(streamer)

    error, stats = asyncio.run(main())
    assert type(error) is TypeError and "await" in str(error), repr(error)
    assert stats.active == 0, stats
