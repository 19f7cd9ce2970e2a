"""DaemonPool counts a call queued at its cap: the worker that runs it is not counted idle twice.

A call submitted with every thread busy and the pool at max_workers waits in the queue; the worker
that finished first ran it and then counted itself idle once for each call, so the pool believed in an
idle worker that did not exist. Once threads past ``keep`` had left, a later call took that phantom's
count, started no thread and waited behind a busy one although the pool had room for another.
"""

from __future__ import annotations

import threading
import time

from plugbay.core.transport.workers import DaemonPool

HANG_GUARD = 10.0


def test_a_call_queued_at_the_cap_leaves_no_phantom_idle_worker() -> None:
    pool = DaemonPool(3, "plugbay-test-owed", keep=1)
    pool._idle_for = 0.05  # threads past keep leave quickly
    try:
        gate = threading.Event()
        first = [pool.submit(gate.wait, HANG_GUARD) for _ in range(3)]
        extra = pool.submit(lambda: None)  # at the cap: queued, no thread for it
        gate.set()
        for future in (*first, extra):
            future.result(HANG_GUARD)
        deadline = time.monotonic() + HANG_GUARD
        while len(pool._threads) > 1 and time.monotonic() < deadline:  # down to keep
            time.sleep(0.02)
        assert len(pool._threads) == 1
        held = threading.Event()
        long = pool.submit(held.wait, HANG_GUARD)
        try:
            second = pool.submit(lambda: "ran")
            # room for a thread of its own: it runs while the long call still holds the only other one
            assert second.result(HANG_GUARD) == "ran"
            assert not long.done()
        finally:
            held.set()
            long.result(HANG_GUARD)
    finally:
        pool.shutdown(wait=True)
