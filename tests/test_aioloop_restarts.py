"""Restarts of plugbay's shared asyncio loop while grpc.aio stays up in the host process leave no loop behind.

grpc.aio's poller keeps every event loop it served until grpc.aio shuts down, which it does only once the
process's last grpc.aio channel and server are gone. A host that keeps one (its own grpc.aio channel, or a
stub of a closed AsyncClient still referenced, as ``async with AsyncClient(...) as client`` leaves one in a
long-lived coroutine) kept, before, one more closed loop for every Client start and stop that used the
broker (about 28 kB each, without end). Counts, not times: the loops alive after 20 cycles are those after one.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from pathlib import Path

import grpc.aio

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "counter"
sys.path.insert(0, str(EXAMPLE))
from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin  # noqa: E402

from plugbay import AsyncClient, Client, ClientConfig  # noqa: E402
from plugbay.core.transport import aioloop  # noqa: E402

CYCLES = 20


class Adder:
    def sum(self, a: int, b: int) -> int:
        return a + b


def config() -> ClientConfig:
    return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                        cmd=[sys.executable, str(EXAMPLE / "plugin.py")])


def loops_alive() -> int:
    gc.collect()
    return sum(isinstance(o, asyncio.AbstractEventLoop) for o in gc.get_objects())


def test_client_restarts_while_the_host_holds_a_grpc_aio_channel(in_tmp: Path) -> None:
    def cycle() -> None:
        with Client(config()) as client:
            client.dispense(PLUGIN_NAME).put("k", 1, Adder())  # a brokered callback: a stream on the shared loop

    own = asyncio.new_event_loop()

    async def open_channel() -> grpc.aio.Channel:
        return grpc.aio.insecure_channel("unix:/nonexistent")  # never used: it only keeps grpc.aio up

    held = own.run_until_complete(open_channel())
    try:
        cycle()
        start = loops_alive()
        for _ in range(CYCLES):
            cycle()
        assert loops_alive() == start
        assert not aioloop.shared().running
    finally:
        own.run_until_complete(held.close())
        own.close()
        aioloop.shared().close_parked()


def test_async_client_restarts_in_one_loop_with_the_last_stub_kept(in_tmp: Path) -> None:
    async def main() -> list[int]:
        counts = []
        for _ in range(CYCLES + 1):
            async with AsyncClient(config()) as client:
                counter = await client.dispense(PLUGIN_NAME)  # kept after the close, as a coroutine's local is
                await counter.put("k", 1, Adder())
            counts.append(loops_alive())
        return counts

    try:
        counts = asyncio.run(main())
    finally:
        aioloop.shared().close_parked()
    assert counts[-1] == counts[0], counts
