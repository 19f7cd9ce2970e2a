"""sup.events and HealthWatcher.history are read by the user's thread while plugbay's thread records more:
a monitoring loop over them must not break when a fault adds events midway, and they read as lists."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.resilience_util import PLUGIN_NAME, faulty_config, wait_until
from tests.test_supervisor import FAST, kill_plugin, kinds

from plugbay import AsyncSupervisor, Client, HealthWatcher, Supervisor  # noqa: E402
from plugbay.core.resilience.healthwatch import NOT_SERVING, SERVING  # noqa: E402


def test_a_loop_over_the_events_outlives_a_restart_recorded_meanwhile(tmp_path: Path) -> None:
    with Supervisor(lambda: faulty_config(tmp_path), restart=FAST, health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        seen = iter(sup.events)
        assert next(seen).kind == "started"
        kill_plugin(kv)
        assert wait_until(lambda: "restarted" in kinds(sup), 30), kinds(sup)
        # the loop goes on over what it was given (the deque raised "deque mutated during iteration")
        assert [e.kind for e in seen] == []
        assert [e.kind for e in sup.events[-3:]] == ["failure", "restarting", "restarted"]
        assert sup.events is not sup.events  # each read is a copy the caller may keep


def test_an_async_supervisor_gives_the_same_list(tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncSupervisor(lambda: faulty_config(tmp_path), restart=FAST, health_interval=None) as sup:
            assert [e.kind for e in sup.events[-1:]] == ["started"]
            assert [e.kind for e in sup.sync_supervisor.events[-1:]] == ["started"]

    asyncio.run(main())


def test_a_loop_over_the_health_history_outlives_a_change_recorded_meanwhile(tmp_path: Path) -> None:
    with Client(faulty_config(tmp_path)) as client:
        kv = client.dispense(PLUGIN_NAME)
        with HealthWatcher(client.channel, interval=0.2, timeout=2.0) as w:
            assert w.wait_for(SERVING, 10)
            seen = iter(w.history)
            assert next(seen)[2] == SERVING
            kv.put("__health__", b"NOT_SERVING")
            assert w.wait_for(NOT_SERVING, 10)
            assert list(seen) == []
            assert [h[2] for h in w.history[-2:]] == [SERVING, NOT_SERVING]
