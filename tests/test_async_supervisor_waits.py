"""An AsyncSupervisor's waits are woken by the Supervisor's changes of state, not asked again and again:
many waiters wake on a restart and on a stop, each within its own timeout, and no thread is added."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

from tests.resilience_util import PLUGIN_NAME, faulty_config

from plugbay import AsyncSupervisor, RestartPolicy  # noqa: E402

SLOW = RestartPolicy(max_restarts=3, window=300, initial_backoff=2.0, max_backoff=2.0, jitter=0)
LONG = RestartPolicy(max_restarts=3, window=300, initial_backoff=60.0, max_backoff=60.0, jitter=0)
WAITERS = 40


def _count_looks(sup: AsyncSupervisor) -> list[int]:
    """Counts each look at the sync Supervisor's state by the waits (wait_running(0))."""
    looks = [0]
    sync = sup.sync_supervisor
    real = sync.wait_running

    def counted(timeout: float) -> bool:
        looks[0] += 1
        return real(timeout)
    sync.wait_running = counted  # type: ignore[method-assign]
    return looks


async def _restarting(sup: AsyncSupervisor) -> bool:
    for _ in range(400):  # the test's own look, bounded: 20 s
        if sup.state == "restarting":
            return True
        await asyncio.sleep(0.05)
    return False


def test_many_waiters_wake_on_the_restart_without_asking_again_and_again(tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncSupervisor(lambda: faulty_config(tmp_path), restart=SLOW, health_interval=None) as sup:
            kv = await sup.dispense(PLUGIN_NAME)
            pid = int(await kv.get("__pid__"))
            threads = threading.active_count()
            os.kill(pid, signal.SIGKILL)
            assert await _restarting(sup)
            looks = _count_looks(sup)
            ready = [asyncio.ensure_future(sup.channel.channel_ready()) for _ in range(4)]
            assert await asyncio.gather(*(sup.wait_running(60) for _ in range(WAITERS))) == [True] * WAITERS
            await asyncio.wait_for(asyncio.gather(*ready), 60)
            # no thread per waiter: the new plugin's Client adds its own few (its stdio reader, a start's)
            assert threading.active_count() < threads + WAITERS // 4, [t.name for t in threading.enumerate()]
            # Woken by the restart's changes of state, and a slow tick in the 2 s backoff: a wait that asked
            # every 20 ms looked some 100 times each
            assert looks[0] <= WAITERS * 12, looks[0]
            assert int(await kv.get("__pid__")) != pid
    asyncio.run(main())


def test_a_stop_wakes_every_waiter_and_each_timeout_is_honoured(tmp_path: Path) -> None:
    async def main() -> None:
        sup = AsyncSupervisor(lambda: faulty_config(tmp_path), restart=LONG, health_interval=None)
        async with sup:
            kv = await sup.dispense(PLUGIN_NAME)
            os.kill(int(await kv.get("__pid__")), signal.SIGKILL)
            assert await _restarting(sup)
            begun = time.monotonic()
            assert await sup.wait_running(0.3) is False  # its own timeout, in a 60 s backoff
            assert time.monotonic() - begun >= 0.3
            waiters = [asyncio.ensure_future(sup.wait_running(120)) for _ in range(WAITERS)]
            ready = asyncio.ensure_future(sup.channel.channel_ready())
            await asyncio.sleep(0.2)
            assert not any(w.done() for w in waiters)
            begun = time.monotonic()
            await sup.stop()
            assert await asyncio.wait_for(asyncio.gather(*waiters), 30) == [False] * WAITERS
            assert time.monotonic() - begun < 60  # the stop woke them, not the backoff's end nor their timeout
            await asyncio.wait([ready], timeout=30)
            assert ready.done() and ready.exception() is not None  # stopped: says so
    asyncio.run(main())
