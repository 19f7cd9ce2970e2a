"""Calls waiting for a handler slot (core/plugin/slotwait.py): one freed slot wakes one waiter, the oldest.

Each freed slot woke every waiting call (notify_all): with 128 waiting, every Put's end made 127 threads
check their caller and go back to sleep. A wake-up handed to one waiter must not be lost: a waiter whose
caller went away hands its slot on, and every live waiter gets one. The calls are real gRPC calls on a
real server whose handler takes a real Slots; where the order of a cancel and a freed slot matters, a
call object stands in for grpc's ServicerContext, its cancel told late as grpc's poll thread tells it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import grpc
import pytest

from plugbay.core.plugin.slotwait import GONE, Slots
from tests.resilience_util import wait_until

WAIT = 30.0  # a lost wake-up shows as a live waiter refused WAITED after this, not as a hang


class _Counted:
    """A call's context that counts how often a waiter checked its caller: once as it queues, once per
    wake-up."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self.checks = 0

    def is_active(self) -> bool:
        self.checks += 1
        return bool(self._context.is_active())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class _Server:
    """A gRPC server whose one method takes a slot of ``slots``, names itself in ``ran``, then holds the
    slot until ``let_go`` has its name (the request, a str)."""

    def __init__(self, slots: Slots, channel: grpc.Channel) -> None:
        self.slots = slots
        self.channel = channel
        self.calls: dict[str, _Counted] = {}
        self.ran: list[str] = []
        self.ended: dict[str, str | None] = {}
        self.let_go: set[str] = set()
        self.cond = threading.Condition()

    def handle(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        name = request.decode()
        counted = _Counted(context)
        with self.cond:
            self.calls[name] = counted
        why = self.slots.take(counted)  # type: ignore[arg-type]
        if why is None:
            with self.cond:
                self.ran.append(name)
                self.cond.notify_all()
                self.cond.wait_for(lambda: name in self.let_go, 60)
            self.slots.release()
        with self.cond:
            self.ended[name] = why
            self.cond.notify_all()
        return b"ran" if why is None else why.encode()

    def call(self, name: str) -> grpc.Future:
        return self.channel.unary_unary("/t.Slots/Take").future(name.encode(), timeout=90)

    def release(self, *names: str) -> None:
        with self.cond:
            self.let_go.update(names)
            self.cond.notify_all()

    def until(self, check: Callable[[], bool]) -> None:
        with self.cond:
            assert self.cond.wait_for(check, 60), (self.ran, self.ended)

    def queued(self, name: str) -> bool:
        """Whether the call checked its caller once: it is in the queue then."""
        with self.cond:
            return name in self.calls and self.calls[name].checks >= 1


@contextmanager
def _served(limit: int) -> Iterator[_Server]:
    pool = ThreadPoolExecutor(2 * limit + 4, thread_name_prefix="test-slots")
    server = grpc.server(pool)
    port = server.add_insecure_port("127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    served = _Server(Slots(limit, WAIT), channel)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "t.Slots", {"Take": grpc.unary_unary_rpc_method_handler(served.handle)}),))
    server.start()
    try:
        yield served
    finally:
        served.release(*served.calls)
        channel.close()
        server.stop(0).wait(10)
        pool.shutdown(wait=True)


def _fill(served: _Server, limit: int, waiters: int) -> list[grpc.Future]:
    """``limit`` calls holding every slot, then ``waiters`` queued one after the other (w0 oldest)."""
    calls = [served.call(f"h{i}") for i in range(limit)]
    served.until(lambda: len(served.ran) == limit)
    for i in range(waiters):
        calls.append(served.call(f"w{i}"))
        assert wait_until(lambda: served.queued(f"w{i}"), 30), f"w{i} did not queue"
    return calls


def test_a_freed_slot_wakes_one_waiter_the_oldest(monkeypatch: pytest.MonkeyPatch) -> None:
    """16 waiters, 16 slots freed one at a time: each waiter checked its caller twice (as it queued, and
    once handed its slot), and they ran in the order they came. With notify_all each freed slot woke every
    waiter left: 141 checks in one run where 32 are needed. (A waiter's periodic look at its caller,
    slotwait.RECHECK, is put out of the way: on a slow machine it would add checks of its own.)"""
    from plugbay.core.plugin import slotwait

    monkeypatch.setattr(slotwait, "RECHECK", 3600.0)
    limit = 16
    with _served(limit) as served:
        calls = _fill(served, limit, limit)
        for i in range(limit):
            served.release(f"h{i}")
            served.until(lambda: len(served.ran) == limit + i + 1)
        served.release(*(f"w{i}" for i in range(limit)))
        assert [c.result(60) for c in calls] == [b"ran"] * (2 * limit)
        checks = {f"w{i}": served.calls[f"w{i}"].checks for i in range(limit)}
        assert checks == {f"w{i}": 2 for i in range(limit)}, (sum(checks.values()), checks)
        assert served.ran[limit:] == [f"w{i}" for i in range(limit)]


def test_every_live_waiter_gets_a_slot_when_some_were_cancelled() -> None:
    """Waiters cancelled while they wait (the oldest among them) leave their place: every live one still
    gets a slot once the slots free, all at once."""
    limit = 12
    with _served(limit) as served:
        calls = _fill(served, limit, limit)
        cancelled = {0, 1, 2, 5, 8, 11}
        for i in cancelled:
            calls[limit + i].cancel()
        served.release(*(f"h{i}" for i in range(limit)), *(f"w{i}" for i in range(limit)))
        live = [f"w{i}" for i in range(limit) if i not in cancelled]
        served.until(lambda: all(name in served.ended for name in live))
        assert {name: served.ended[name] for name in live} == dict.fromkeys(live), served.ended


class _Call:
    """What Slots.take() reads of grpc's ServicerContext. Its cancel is told (its callbacks run) only
    when ``tell()`` is called, as grpc's poll thread does some time after the caller cancelled."""

    def __init__(self) -> None:
        self.active = True
        self.callbacks: list[Callable[[], None]] = []
        self.checks = 0

    def is_active(self) -> bool:
        self.checks += 1
        return self.active

    def time_remaining(self) -> float | None:
        return None

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self.callbacks.append(callback)
        return True

    def tell(self) -> None:
        for callback in self.callbacks:
            callback()


def test_a_slot_handed_to_a_waiter_whose_caller_left_goes_to_the_next() -> None:
    """The two oldest waiters' callers left, not yet told: the first freed slot is handed to each in turn
    and handed on; both live waiters get a slot from two freed ones."""
    limit = 4
    slots = Slots(limit, WAIT)
    assert all(slots.take(_Call()) is None for _ in range(limit))  # no waiter yet: the free slots
    calls = [_Call() for _ in range(limit)]
    ends: dict[int, str | None] = {}
    threads = []
    for i, call in enumerate(calls):
        threads.append(threading.Thread(target=lambda i=i, call=call: ends.setdefault(i, slots.take(call))))
        threads[-1].start()
        assert wait_until(lambda call=call: call.checks >= 1, 30), f"waiter {i} did not queue"
    calls[0].active = calls[1].active = False
    slots.release()
    slots.release()
    for t in threads:
        t.join(60)
    assert ends == {0: GONE, 1: GONE, 2: None, 3: None}, ends
    for call in calls:
        call.tell()


class _PausingTokens(deque[None]):
    """Free slots whose return (append) on the thread named ``releaser`` pauses: the thread swapped out
    between a release()'s look at the queue and the slot's return, a gap of a few bytecodes made wide
    enough to meet."""

    pause = False

    def append(self, token: None) -> None:
        if self.pause and threading.current_thread().name == "releaser":
            time.sleep(0.3)
        super().append(token)


def test_a_call_queueing_while_a_slot_is_returned_gets_it() -> None:
    """A release() sees a waiter, which then leaves (its caller gone); a new call queues while that slot is
    on its way back to the free slots: it must get the slot, not wait out its wait beside it."""
    slots = Slots(1, 2.0)
    slots._free = _PausingTokens([None])
    assert slots.take(_Call()) is None  # the only slot, held
    leaving = _Call()
    checking = threading.Event()
    checks_of = leaving.is_active

    def slow_check() -> bool:  # the leaving waiter, woken by its cancel, checks its caller (under the lock)
        if not leaving.active:
            checking.set()
            time.sleep(0.3)
        return checks_of()

    leaving.is_active = slow_check  # type: ignore[method-assign]
    ends: dict[str, str | None] = {}
    first = threading.Thread(target=lambda: ends.setdefault("leaving", slots.take(leaving)))
    first.start()
    assert wait_until(lambda: bool(slots._queue), 30), "the first waiter did not queue"
    leaving.active = False
    threading.Thread(target=leaving.tell).start()
    assert checking.wait(30)
    slots._free.pause = True
    releaser = threading.Thread(target=slots.release, name="releaser")
    releaser.start()  # sees the first waiter queued; it leaves GONE; the slot is then on its way back
    first.join(30)
    time.sleep(0.1)
    ends["new"] = slots.take(_Call())
    releaser.join(30)
    assert ends == {"leaving": GONE, "new": None}, ends


class _BrokenCall(_Call):
    def is_active(self) -> bool:
        raise RuntimeError("context broke")


def test_a_waiter_whose_context_raises_leaves_no_trace_in_the_queue() -> None:
    """A context method raising while a call waits: the error reaches the caller and the queue forgets the
    call, so the next freed slot is not handed to it and lost."""
    slots = Slots(1, 0.5)
    assert slots.take(_Call()) is None
    with pytest.raises(RuntimeError, match="context broke"):
        slots.take(_BrokenCall())
    assert not slots._queue
    slots.release()
    assert slots.take(_Call()) is None  # the slot came back


def test_a_waiter_whose_cancel_is_never_told_still_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    """grpcio runs a call's callbacks only once every operation of the call is done: a waiter whose caller
    left but whose callback never came leaves its place (GONE) well before its hour-long wait ends."""
    from plugbay.core.plugin import slotwait

    monkeypatch.setattr(slotwait, "RECHECK", 0.05)
    slots = Slots(1, 3600.0)
    assert slots.take(_Call()) is None
    gone = _Call()
    ends: dict[str, str | None] = {}
    waiter = threading.Thread(target=lambda: ends.setdefault("gone", slots.take(gone)), daemon=True)
    waiter.start()
    try:
        assert wait_until(lambda: gone.checks >= 1, 30), "the waiter did not queue"
        gone.active = False  # its caller left; nothing tells the wait (no tell())
        waiter.join(30)
        assert ends == {"gone": GONE}, ends
        assert not slots._queue
    finally:
        slots.stop_waiting()  # a waiter still there (the failure) is refused, not left for the hour
        waiter.join(30)


def test_a_slot_released_more_often_than_taken_is_refused() -> None:
    # the free slots are a deque of tokens now: an extra release would raise the cap silently, where the
    # BoundedSemaphore they replaced raised
    slots = Slots(1)
    with pytest.raises(ValueError, match="released more often than taken"):
        slots.release()
    assert len(slots._free) == 1


class _SeenLate(deque[Any]):
    """A queue of waiters whose look (truth) by the thread named ``releaser`` is told only once ``go`` is
    set: that release() swapped out between its look at the queue and its lock, for as long as the test
    needs."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = threading.Event()
        self.go = threading.Event()

    def __bool__(self) -> bool:
        saw = len(self) > 0
        if threading.current_thread().name == "releaser" and not self.go.is_set():
            self.seen.set()
            self.go.wait(30)
        return saw


def test_a_slot_released_more_often_than_taken_is_refused_while_a_call_waits() -> None:
    """An extra release() that saw a call waiting went on under the lock without the cap's check: that
    waiter had its slot from the holder's own release meanwhile and gave it back, every slot was free,
    and the extra one went among them too, a second slot of a gate of one."""
    slots = Slots(1, WAIT)
    slots._queue = _SeenLate()
    assert slots.take(_Call()) is None  # the only slot, held
    waiting = _Call()
    ends: dict[str, str | None] = {}
    waiter = threading.Thread(target=lambda: ends.setdefault("waiter", slots.take(waiting)))
    waiter.start()
    assert wait_until(lambda: waiting.checks >= 1, 30), "the call did not queue"
    refused: list[ValueError] = []

    def extra() -> None:
        try:
            slots.release()
        except ValueError as exc:
            refused.append(exc)

    releaser = threading.Thread(target=extra, name="releaser")
    releaser.start()
    try:
        assert slots._queue.seen.wait(30), "the extra release did not look at the queue"
        slots.release()  # the holder's: the waiter gets the slot
        waiter.join(30)
        assert ends == {"waiter": None}, ends
        slots.release()  # the waiter's: every slot is free
    finally:
        slots._queue.go.set()
        releaser.join(30)
    assert [str(exc) for exc in refused] == ["a handler slot was released more often than taken"]
    assert len(slots._free) == 1
