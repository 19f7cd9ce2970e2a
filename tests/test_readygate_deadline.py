"""A supervised call that waits for its plugin's successor keeps its own deadline.

The gate waited up to 5 s for a successor (2 s after a refused send) whatever was left of the
call's deadline, then gave the attempt the time that had been left before that wait: a call with
timeout=0.5 could run past 5.5 s. The Supervisor here is a stand-in for its Restarter interface,
whose successor never comes; the gate under test is the real one. Once that wait spent the deadline,
the attempt is not made: it fails as a timed-out call, unsent (it was given a 1 ms sliver, which a
fast plugin could still run).
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from plugbay.core.host.callerrors import PluginDied
from plugbay.core.resilience.readygate import ReadyGate
from plugbay.errors import CallTimeoutError, PluginDiedError

TIMEOUT = 0.5


class NoSuccessor:
    name = "kv"
    restarts = 0
    last_failure = None
    call_timeout = None
    max_restarts = 3
    state = "running"
    current_client: Any = SimpleNamespace(exited=True)  # the plugin is gone; the Supervisor has not seen it yet

    def __init__(self) -> None:
        self.waits: list[float] = []

    def wait_running(self, timeout: float) -> bool:
        return True

    def channel_generation(self) -> int:
        return 0

    def changed_since(self, generation: int, timeout: float) -> bool:
        self.waits.append(timeout)
        time.sleep(min(timeout, 1.0))
        return False

    def raise_if_failed(self) -> None:
        pass


def test_the_wait_for_a_successor_and_the_attempt_fit_in_the_calls_deadline() -> None:
    sup = NoSuccessor()
    given: list[float | None] = []
    with pytest.raises(CallTimeoutError, match="spent waiting for the plugin to restart") as info:
        ReadyGate(sup).run("Get", lambda t: given.append(t) or "answer", TIMEOUT)
    assert sup.waits and max(sup.waits) <= TIMEOUT
    assert given == [] and info.value.sent is False  # type: ignore[attr-defined]  # nothing left: not sent


def test_a_refused_send_waits_for_a_successor_within_the_deadline() -> None:
    sup = NoSuccessor()
    sup.current_client = SimpleNamespace(exited=False, runner=SimpleNamespace(ending=lambda: False))

    def refused(timeout: float | None) -> None:
        raise PluginDied("plugin 'kv' is gone: its connection was closed; start a new Client", None, sent=False)

    started = time.monotonic()
    try:
        ReadyGate(sup).run("Get", refused, TIMEOUT)
    except PluginDiedError:
        pass
    assert sup.waits and max(sup.waits) <= TIMEOUT
    assert time.monotonic() - started < 3  # bounded by the deadline, not by the 2 s wait after it


def test_the_async_gate_keeps_the_deadline_too() -> None:
    sup = NoSuccessor()
    given: list[float | None] = []

    async def attempt(timeout: float | None) -> str:
        given.append(timeout)
        return "answer"

    sup.changed_since = lambda generation, timeout: False  # type: ignore[method-assign]  # polled: no sleep
    started = time.monotonic()
    with pytest.raises(CallTimeoutError) as info:
        asyncio.run(ReadyGate(sup).run_async("Get", attempt, TIMEOUT))
    assert time.monotonic() - started < 3  # the poll for a successor stopped at the deadline, not after 5 s
    assert given == [] and info.value.sent is False  # type: ignore[attr-defined]
