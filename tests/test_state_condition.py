"""The Supervisor's StateCondition with real event loops on real threads: a notify wakes every
coroutine waiting in until() on any loop, a waiter's timeout holds without a notify, and a waiter
whose loop was closed under it (never cancelled) leaves no entry behind once a notify finds it so."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from plugbay.core.resilience.wakeups import StateCondition


class LoopThread:
    """An event loop running on a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        assert not self.thread.is_alive()
        if not self.loop.is_closed():
            self.loop.close()


@pytest.fixture
def loops() -> Iterator[list[LoopThread]]:
    made = [LoopThread(), LoopThread()]
    yield made
    for lt in made:
        lt.stop()


def test_a_notify_wakes_waiters_on_every_loop(loops: list[LoopThread]) -> None:
    cond = StateCondition()
    flag = threading.Event()
    futures = [asyncio.run_coroutine_threadsafe(cond.until(flag.is_set, 60), lt.loop) for lt in loops]
    for _ in range(500):  # both waiting (registered) before the change; bounded at about 10 s
        if len(cond._aio_waiters) == 2:
            break
        threading.Event().wait(0.02)
    assert len(cond._aio_waiters) == 2
    flag.set()
    with cond:
        cond.notify_all()
    assert [f.result(timeout=10) for f in futures] == [True, True]
    assert cond._aio_waiters == set()


def test_a_waiter_without_a_change_gives_up_at_its_timeout(loops: list[LoopThread]) -> None:
    cond = StateCondition()
    future = asyncio.run_coroutine_threadsafe(cond.until(lambda: False, 0.2), loops[0].loop)
    assert future.result(timeout=10) is False
    assert cond._aio_waiters == set()


def test_a_waiter_whose_loop_was_closed_under_it_is_dropped_at_the_next_notify(loops: list[LoopThread]) -> None:
    cond = StateCondition()
    lt = loops[0]
    task_box: list[asyncio.Task[bool]] = []
    started = threading.Event()

    def begin() -> None:
        task_box.append(lt.loop.create_task(cond.until(lambda: False, 60)))
        started.set()

    lt.loop.call_soon_threadsafe(begin)
    assert started.wait(10)
    for _ in range(500):  # bounded at about 10 s
        if cond._aio_waiters:
            break
        threading.Event().wait(0.02)
    assert len(cond._aio_waiters) == 1
    lt.stop()  # stopped and closed with the waiter still pending: its finally never runs
    assert lt.loop.is_closed() and not task_box[0].done()
    assert len(cond._aio_waiters) == 1
    with cond:
        cond.notify_all()  # finds the loop closed
    assert cond._aio_waiters == set()
    # the other loop's waiters are still woken as ever
    flag = threading.Event()
    other = asyncio.run_coroutine_threadsafe(cond.until(flag.is_set, 60), loops[1].loop)
    for _ in range(500):  # bounded at about 10 s
        if cond._aio_waiters:
            break
        threading.Event().wait(0.02)
    flag.set()
    with cond:
        cond.notify_all()
    assert other.result(timeout=10) is True
    # the orphaned waiter's coroutine is closed here (its finally runs); its task, pending on a closed
    # loop by design, would otherwise be reported "destroyed but pending" when collected
    task_box[0].get_coro().close()
    task_box[0]._log_destroy_pending = False
