"""DaemonPool counts a call queued at its cap: the worker that runs it is not counted idle twice.

A call submitted with every thread busy and the pool at max_workers waits in the queue; the worker
that finished first ran it and then counted itself idle once for each call, so the pool believed in an
idle worker that did not exist. Once threads past ``keep`` had left, a later call took that phantom's
count, started no thread and waited behind a busy one although the pool had room for another.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pytest

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


def _stop_thread(exc: type[BaseException]) -> Callable[[Future[Any]], None]:
    def callback(future: Future[Any]) -> None:
        raise exc("raised by a done callback")
    return callback


@pytest.mark.parametrize("exc", [SystemExit, KeyboardInterrupt])
def test_a_done_callback_ending_its_worker_leaves_the_pool_its_place(
        exc: type[BaseException], caplog: pytest.LogCaptureFixture) -> None:
    """concurrent.futures logs an Exception out of a done callback and lets a BaseException through
    set_result(): the worker ends there. It stayed counted, so a pool at max_workers=1 started no thread
    for any later call, and a call queued for it then never ran."""
    pool = DaemonPool(1, "plugbay-test-lost")
    try:
        with caplog.at_level(logging.CRITICAL, logger="plugbay.workers"):
            gate = threading.Event()
            first = pool.submit(gate.wait, HANG_GUARD)
            first.add_done_callback(_stop_thread(exc))
            owed = pool.submit(lambda: "owed")  # at the cap: for the worker that finishes first
            gate.set()
            assert owed.result(HANG_GUARD) == "owed"
            assert first.result(0) is True
            for lost in [t for t in threading.enumerate() if t.name == "plugbay-test-lost_0"]:
                lost.join(HANG_GUARD)  # ended, whatever it did after the callback
            assert pool.submit(lambda: "later").result(HANG_GUARD) == "later"
        assert len(pool._threads) == 1, pool._threads  # the one that ran the owed call, not the lost one
        # not swallowed: said as ThreadPoolExecutor says it (critical, with the traceback)
        said = [r for r in caplog.records if r.name == "plugbay.workers"]
        assert [(r.getMessage(), r.exc_info and r.exc_info[0]) for r in said] == [("Exception in worker", exc)]
    finally:
        pool.shutdown(wait=True)


def test_shutdown_waits_for_the_call_a_lost_worker_left_owed(caplog: pytest.LogCaptureFixture) -> None:
    """shutdown(wait=True) joined the threads it saw when called. A worker lost after that (its done
    callback raised SystemExit) started a thread for the call queued behind it, which shutdown() did not
    join: it returned with that call still running, where Executor.shutdown(wait=True) runs every
    submitted call first."""
    pool = DaemonPool(1, "plugbay-test-lost-shutdown")
    gate, in_callback, raise_now = threading.Event(), threading.Event(), threading.Event()
    lost: list[threading.Thread] = []

    def stop_thread_later(future: Future[Any]) -> None:
        lost.append(threading.current_thread())
        in_callback.set()
        raise_now.wait(HANG_GUARD)
        raise SystemExit("raised by a done callback")

    def owed_call() -> str:
        lost[0].join(HANG_GUARD)  # it ends after the lost worker, the one thread shutdown() knew of
        time.sleep(0.2)  # room for a shutdown() that waits for no more to return first; nothing here is timed
        return "owed"

    shutting = threading.Thread(target=pool.shutdown, kwargs={"wait": True}, name="test-shutdown")
    with caplog.at_level(logging.CRITICAL, logger="plugbay.workers"):
        first = pool.submit(gate.wait, HANG_GUARD)
        first.add_done_callback(stop_thread_later)
        owed = pool.submit(owed_call)  # at the cap: for the worker that finishes first
        gate.set()
        assert in_callback.wait(HANG_GUARD)
        shutting.start()
        deadline = time.monotonic() + HANG_GUARD
        while not pool._shutdown and time.monotonic() < deadline:  # shutdown() has its list of threads
            time.sleep(0.01)
        raise_now.set()  # the worker is lost now: a thread it did not list runs the owed call
        shutting.join(HANG_GUARD)
        assert not shutting.is_alive(), "shutdown(wait=True) did not return"
        assert owed.done(), "shutdown(wait=True) returned before a call submitted before it had run"
        assert owed.result(0) == "owed"
    assert [r.getMessage() for r in caplog.records if r.name == "plugbay.workers"] == ["Exception in worker"]
