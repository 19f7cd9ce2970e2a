"""The streaming example plugin's stats once its stream handlers have ended (a cancel reaches the plugin's
handler after the host's call ends: asked again until none runs)."""

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
