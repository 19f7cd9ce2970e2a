"""AsyncSupervisor's stop and waits against real plugin processes: its stop runs on a thread of its own, so the
user's work on the loop's default executor cannot hold it up (nor a cancelled start's); a cancel of the task that
awaits stop() is passed on only once the plugin is stopped; wait_running() polls on the loop, so any number of
tasks may wait at once, each within its own timeout.

Each wait is bounded (a hang fails instead of stalling the run); what is asserted is what had happened when a
step ended, never how long it took."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests import gobuild
from tests.race_util import pid_gone
from tests.resilience_util import FAULTY, HANDSHAKE, PLUGIN_NAME, PLUGINS, PY, faulty_config

from plugbay import AsyncSupervisor, ClientConfig, ProcessRunner, RestartPolicy

FAST = RestartPolicy(initial_backoff=0.05, max_backoff=0.2)
GUARD = 60.0  # the hang guard of a whole step
HELD = 20.0  # how long the user's work holds the default executor at most: the old stop waited for it


def misbehave(mode: str, **kw: Any) -> ClientConfig:
    """A config of the Go misbehave plugin (its runner runs once: for a factory that is called once)."""
    runner = ProcessRunner([str(gobuild.go_program_or_skip("misbehave"))],
                           env={"MISBEHAVE_MODE": mode, "MISBEHAVE_MAX_SECONDS": "60"})
    return ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, runner=runner, **kw)


async def busy_default_executor(release: threading.Event) -> asyncio.Future[bool]:
    """The loop's default executor (one thread here) held by the user's own blocking work until ``release``."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(1))
    return loop.run_in_executor(None, release.wait, HELD)


def test_a_stop_ends_the_plugin_while_the_users_work_holds_the_loops_default_executor(tmp_path: Path) -> None:
    release = threading.Event()

    async def main() -> None:
        sup = AsyncSupervisor(lambda: faulty_config(tmp_path), restart=FAST, health_interval=None)
        await asyncio.wait_for(sup.start(), GUARD)
        client = sup.current_client
        assert client is not None and client.runner.pid is not None
        pid = client.runner.pid
        busy = await busy_default_executor(release)
        try:
            stopping = asyncio.ensure_future(sup.stop())
            await asyncio.wait([stopping], timeout=GUARD)
            assert stopping.done() and not busy.done()  # stopped while the user's work still held the executor
            stopping.result()
            assert sup.state == "stopped" and pid_gone(pid)
        finally:
            release.set()
            await busy
            await sup.stop()

    asyncio.run(main())


def test_a_cancelled_start_ends_the_plugin_while_the_users_work_holds_the_loops_default_executor() -> None:
    # as AsyncClient's (test_cancelling_start_works_when_the_loops_executor_is_busy): the plugin never
    # answers its handshake, so the start goes on until the cancel stops it
    release = threading.Event()
    config = misbehave("silent", start_timeout=40)
    runner = config.runner
    assert isinstance(runner, ProcessRunner)

    async def main() -> None:
        sup = AsyncSupervisor(lambda: config, restart=FAST, health_interval=None)
        busy = await busy_default_executor(release)
        try:
            starting = asyncio.ensure_future(sup.start())
            for _ in range(int(GUARD / 0.02)):  # launched: now the start waits for its handshake
                if runner.pid is not None:
                    break
                await asyncio.sleep(0.02)
            assert runner.pid is not None
            starting.cancel()
            await asyncio.wait([starting], timeout=GUARD)
            assert starting.cancelled() and not busy.done()
            assert sup.state == "stopped" and pid_gone(runner.pid)
        finally:
            release.set()
            await busy
            await sup.stop()

    asyncio.run(main())


def test_a_cancel_of_the_task_awaiting_stop_is_passed_on_once_the_plugin_is_stopped() -> None:
    # the plugin does not exit on Shutdown: the stop waits out its kill_grace, then kills it
    async def main() -> None:
        config = misbehave("linger", kill_grace=3.0)
        sup = AsyncSupervisor(lambda: config, health_interval=None)
        await asyncio.wait_for(sup.start(), GUARD)
        client = sup.current_client
        assert client is not None and client.runner.pid is not None
        pid = client.runner.pid
        stopping = asyncio.ensure_future(sup.stop())
        await asyncio.sleep(0)  # the stop has begun
        stopping.cancel()
        await asyncio.wait([stopping], timeout=GUARD)
        assert stopping.cancelled()
        assert sup.state == "stopped" and pid_gone(pid)  # not left running by the cancel
        assert sup.sync_supervisor.current_client is None

    asyncio.run(main())


def test_any_number_of_tasks_wait_for_the_plugin_to_run_each_within_its_own_timeout(tmp_path: Path) -> None:
    hold = tmp_path / "hold"  # while it exists, a restarted plugin does not start

    def config() -> ClientConfig:
        if not (tmp_path / "first").exists():
            (tmp_path / "first").touch()
            return faulty_config(tmp_path)
        held = f"while [ -e {hold} ]; do sleep 0.05; done; exec {PY} {FAULTY}"
        return faulty_config(tmp_path, cmd=["sh", "-c", held])

    async def main() -> None:
        async with AsyncSupervisor(config, restart=FAST, health_interval=None) as sup:
            kv = await sup.dispense(PLUGIN_NAME)
            hold.touch()
            os.kill(int(await kv.get("__pid__")), signal.SIGKILL)
            for _ in range(int(GUARD / 0.02)):  # the Supervisor saw it: now it restarts, held
                if sup.current_client is None:
                    break
                await asyncio.sleep(0.02)
            assert sup.current_client is None
            long = [asyncio.ensure_future(sup.wait_running(GUARD)) for _ in range(4)]
            short = asyncio.ensure_future(sup.wait_running(0.2))
            await asyncio.wait([short], timeout=HELD)
            # the short wait ended within its own timeout, not after the long ones
            assert short.done() and short.result() is False and not any(w.done() for w in long)
            hold.unlink()
            assert await asyncio.wait_for(asyncio.gather(*long), GUARD) == [True] * 4
            assert await sup.wait_running(0)

    asyncio.run(main())
