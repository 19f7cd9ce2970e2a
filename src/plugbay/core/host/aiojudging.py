"""Judging an asyncio call's failure off the event loop, one exit check for the calls that broke together.

What a failure means is the sync ManagedChannel's to say (FailureJudge); it may
wait for the plugin's exit to show, which blocks, so it runs on the owner's
executor. A broken connection fails many calls at once: a wait each held a
thread each, one after another on a busy executor, so the last of them failed
seconds late. Here one check at a time runs, and every call broken meanwhile
shares it when it tells that call enough.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, NamedTuple, TypeVar

import grpc

from plugbay.core.host.judging import ExitCheck, FailureJudge

_T = TypeVar("_T")
# Failures whose meaning may need the plugin's exit status, which can take the exit probe a
# moment to see (a socket closes a few milliseconds before the exit is visible).
_MAY_MEAN_EXIT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
_SLACK = 0.02  # a call that broke this long after a shared check began may still share it


def off_loop(executor: Executor | None, func: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
    """``func(*args)`` on ``executor``; once that is shut down (its owner was killed), on the loop's own."""
    loop = asyncio.get_running_loop()
    try:
        return loop.run_in_executor(executor, func, *args)
    except RuntimeError:  # cannot schedule new futures after shutdown
        return loop.run_in_executor(None, func, *args)


def retrieved(task: asyncio.Future[Any]) -> None:
    """A done callback: asks a finished task's exception, so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


class _Check(NamedTuple):
    future: asyncio.Future[ExitCheck]
    begun: float  # time.monotonic()
    wait: float  # the most it waits for an exit to show


class SharedExitCheck:
    """Judges an asyncio channel's failed calls by its sync twin's FailureJudge, sharing the exit checks."""

    def __init__(self, judge: FailureJudge, executor: Executor | None) -> None:
        self._judge = judge
        self._executor = executor
        self._held: _Check | None = None  # the latest check, running or done

    async def translate(self, exc: grpc.RpcError, past_deadline: bool, left: float | None) -> BaseException:
        """The typed error of a call's failure; ``left``: what is left of its deadline (None: it has none)."""
        judge = self._judge
        wait = judge.exit_wait(exc, left)
        if wait > 0:  # the connection broke: the plugin's exit may show a moment later
            answered = await self._exit_shown(wait)
            return await off_loop(self._executor, judge.translate_waited, exc, past_deadline, answered)
        if exc.code() in _MAY_MEAN_EXIT:  # judged by the exit probe, which may block a moment
            return await off_loop(self._executor, judge.translate_within, exc, past_deadline, left)
        return judge.translate_within(exc, past_deadline, left)

    async def _exit_shown(self, wait: float) -> bool:
        """Let the plugin's exit show for up to ``wait`` from about when this call broke, in one check at a
        time that every call broken meanwhile shares; True: the plugin answered after the break (it runs)."""
        broke = time.monotonic()
        need = broke + wait  # watched until then with no exit: the plugin still runs
        while True:
            held = self._held
            if held is None or (held.future.done() and _tells(held, broke, need) is None):
                wait = max(0.0, need - time.monotonic())
                future = off_loop(self._executor, self._judge.check_exit, wait)
                future.add_done_callback(retrieved)
                held = self._held = _Check(future, time.monotonic(), wait)
            # a check begun for a call with a longer deadline runs longer than this call may wait
            left = need - time.monotonic()
            await asyncio.wait([held.future], timeout=None if math.isinf(left) else max(0.0, left))
            if not held.future.done():
                return False  # this call's share of the wait is over and no exit showed
            told = _tells(held, broke, need)
            if told is not None:
                return told


def _tells(held: _Check, broke: float, need: float) -> bool | None:
    """What a finished check tells a call that broke at ``broke`` and may wait until ``need``: the plugin
    answered after the break (True), the call's judging needs no more waiting (False: it exited, or no
    exit showed as long as the call may wait), or nothing (None: it needs a check of its own)."""
    future = held.future
    if future.cancelled() or future.exception() is not None:
        return False  # the judging asks the probe again, and says what it found
    found = future.result()
    if found.answered_at is not None:
        return True if found.answered_at >= broke else None
    if found.why is not None:
        return False
    return False if held.begun >= broke - _SLACK and held.begun + held.wait >= need - _SLACK else None
