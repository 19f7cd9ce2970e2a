"""Leaving an `async for` over an AsyncClient's server stream early (break) ends the call at once: the plugin's
handler sees the cancel without waiting for the garbage collector (grpc.aio's call holds itself in a cycle).
So does leaving an `async with` block around the call. A later read says why the stream ended, not a bare
CancelledError a task nobody cancelled would take for its own. The real streaming example plugin."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "streaming"))

from streaming_plugin_def import HANDSHAKE, PLUGIN_NAME, StreamerPlugin  # noqa: E402

from plugbay import AsyncClient, ClientConfig  # noqa: E402

CONFIG = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: StreamerPlugin()},
                      cmd=[sys.executable, str(REPO / "examples" / "streaming" / "plugin.py")])


async def _handlers_ended(streamer: Any) -> Any:
    """The plugin's stats once no stream handler runs (asked again while one does; about 20 s: a hang guard)."""
    for _ in range(200):
        stats = await streamer.stats()
        if stats.active == 0:
            return stats
        await asyncio.sleep(0.1)
    return stats


def test_break_out_of_async_for_cancels_the_stream(no_gc: None) -> None:
    async def main() -> tuple[Any, Any, BaseException | None]:
        async with AsyncClient(CONFIG) as client:
            streamer = await client.dispense(PLUGIN_NAME)
            stream = streamer.generate(0, 100)  # endless: only a cancel ends it
            async for chunk in stream:
                if chunk.seq == 2:
                    break
            stats = await _handlers_ended(streamer)
            try:
                await stream.read()
                later: BaseException | None = None
            except BaseException as exc:  # noqa: BLE001 - what a read after the break raises, judged below
                later = exc
            return stats, await stream.code(), later

    stats, code, later = asyncio.run(main())
    assert (stats.active, stats.cancelled) == (0, 1), stats
    assert code.name == "CANCELLED"
    assert isinstance(later, asyncio.InvalidStateError) and "`async for`" in str(later), repr(later)


def test_leaving_async_with_cancels_the_stream(no_gc: None) -> None:
    async def main() -> Any:
        async with AsyncClient(CONFIG) as client:
            streamer = await client.dispense(PLUGIN_NAME)
            async with streamer.generate(0, 100) as stream:
                assert (await stream.read()).seq == 0
            return await _handlers_ended(streamer)

    stats = asyncio.run(main())
    assert (stats.active, stats.cancelled) == (0, 1), stats


def test_a_stream_read_to_its_end_is_not_cancelled(no_gc: None) -> None:
    async def main() -> tuple[list[int], Any, Any]:
        async with AsyncClient(CONFIG) as client:
            streamer = await client.dispense(PLUGIN_NAME)
            async with streamer.generate(3, 10) as stream:
                seqs = [chunk.seq async for chunk in stream]
            return seqs, await stream.code(), await _handlers_ended(streamer)

    seqs, code, stats = asyncio.run(main())
    assert seqs == [0, 1, 2] and code.name == "OK"
    assert (stats.active, stats.cancelled) == (0, 0), stats
