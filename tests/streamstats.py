"""The streaming example plugin's stats once its stream handlers have ended (a cancel reaches the plugin's
handler after the host's call ends: asked again until none runs); a killed client's stream refused alike by
`async for` and by `async with`."""

from __future__ import annotations

import asyncio
from typing import Any


async def handlers_ended(streamer: Any) -> Any:
    """The stats of ``streamer`` (an AsyncStreamerClient) once no stream handler runs; asked again while one
    does, about 20 s at most: a hang guard, the caller asserts what the stats say."""
    for _ in range(200):
        stats = await streamer.stats()
        if stats.active == 0:
            return stats
        await asyncio.sleep(0.1)
    return stats


async def refused_both_ways(client: Any, streamer: Any) -> tuple[BaseException, BaseException]:
    """Kill ``client``, then what `async for` over a stream of ``streamer`` raises, and what the first read
    inside `async with` over one raises (both refused, unsent)."""
    await client.kill()
    try:
        async for _ in streamer.generate(0, 100):
            pass
    except Exception as exc:  # noqa: BLE001 - compared by the caller
        iterated: BaseException = exc
    try:
        async with streamer.generate(0, 100) as stream:
            await stream.read()
    except Exception as exc:  # noqa: BLE001 - compared by the caller
        read: BaseException = exc
    return iterated, read
