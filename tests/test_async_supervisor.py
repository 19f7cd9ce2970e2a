"""AsyncSupervisor against real plugin processes: stubs on grpc.aio that survive kill -9 and restarts,
calls held during a restart, typed refusals after stop, and nothing left behind."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.race_util import assert_async_with_refused_on_another_loop, assert_wrong_loop, start_from_another_loop
from tests.resilience_util import FAULTY, PLUGIN_NAME, PY, faulty_config, run_resilience_doc_example, wait_until

from plugbay import (AsyncSupervisor, ClientStateError, PluginDiedError, RestartPolicy, RetryPolicy,
                     UnknownPluginError)
from plugbay.core.host.aiochannel import WrongLoop

FAST = RestartPolicy(initial_backoff=0.05, max_backoff=0.2)


def sup_threads() -> list[str]:
    return [t.name for t in threading.enumerate()
            if t.name.startswith(("plugbay-async-sup", "plugbay-supervisor", "plugbay-health"))]


def test_stubs_survive_a_kill_9_and_calls_made_during_the_restart_wait_for_it(tmp_path: Path) -> None:
    async def main() -> None:
        events: list[str] = []
        sup = AsyncSupervisor(lambda: faulty_config(tmp_path), restart=FAST, health_interval=None,
                              on_event=lambda e: events.append(e.kind))
        async with sup:
            kv = await sup.dispense(PLUGIN_NAME)
            assert await sup.dispense(PLUGIN_NAME) is kv  # once per name
            await kv.put("k", b"v")
            first = int(await kv.get("__pid__"))
            os.kill(first, signal.SIGKILL)
            # The first call may be written to the connection before its close is seen: it fails typed
            # (the plugin may have got it). The next ones find the plugin dead or restarting: the gate
            # holds them for its successor.
            try:
                await kv.get("__pid__")
            except PluginDiedError:
                pass
            pids = {int(await kv.get("__pid__")) for _ in range(5)}
            assert len(pids) == 1 and first not in pids and sup.sync_supervisor.restarts == 1
            assert sup.current_client is not None and sup.current_client.runner.pid in pids
            assert events[:1] == ["started"] and "restarted" in events
            with pytest.raises(UnknownPluginError):
                await sup.dispense("nope")
        assert sup.state == "stopped"
        with pytest.raises(ClientStateError, match="was stopped"):
            await kv.get("k")

    asyncio.run(main())
    assert wait_until(lambda: not sup_threads(), 10), sup_threads()


def test_a_call_in_flight_when_the_plugin_dies_fails_typed_unless_retry_marks_it_safe(tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncSupervisor(lambda: faulty_config(tmp_path), restart=FAST, health_interval=None) as sup:
            kv = await sup.dispense(PLUGIN_NAME)
            with pytest.raises(PluginDiedError):
                await kv.get("__die__")  # the plugin exits in the middle of the call: not resent
            assert await kv.get("__pid__")  # the successor answers
        async with AsyncSupervisor(lambda: faulty_config(tmp_path), restart=FAST, health_interval=None,
                                   retry=RetryPolicy(methods=["Get"], max_attempts=3)) as sup:
            kv = await sup.dispense(PLUGIN_NAME)
            assert await kv.get("__die_once__") == b"survived"  # died once; Get is safe to repeat: retried
            assert sup.sync_supervisor.restarts == 1

    asyncio.run(main())
    assert wait_until(lambda: not sup_threads(), 10), sup_threads()


def test_the_loop_stays_free_while_a_call_waits_for_a_slow_restart(tmp_path: Path) -> None:
    slow = tmp_path / "slow"
    slow.mkdir()

    def config() -> Any:
        # each start after the first takes about a second (a shell sleeps before the plugin starts)
        starts = len(list(slow.iterdir()))
        (slow / str(starts)).touch()
        return faulty_config(tmp_path, cmd=["sh", "-c", f"sleep 1; exec {PY} {FAULTY}"] if starts else None)

    async def main() -> None:
        async with AsyncSupervisor(config, restart=FAST, health_interval=None) as sup:
            kv = await sup.dispense(PLUGIN_NAME)
            os.kill(int(await kv.get("__pid__")), signal.SIGKILL)
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                for _ in range(500):
                    ticks += 1
                    await asyncio.sleep(0.01)

            ticker = asyncio.ensure_future(tick())
            started = time.monotonic()
            try:  # as in the first test, the first call after the kill may have been written before it
                await kv.get("__pid__")
            except PluginDiedError:
                pass
            assert await kv.get("__pid__")
            waited = time.monotonic() - started
            ticker.cancel()
            assert ticks >= int(waited / 0.01 / 4), (ticks, waited)  # the loop ran while the call waited

    asyncio.run(main())


def test_the_docs_example_runs_as_written(tmp_path: Path) -> None:
    done = run_resilience_doc_example(tmp_path, "#### `AsyncSupervisor`")
    assert done.stdout.strip() == "b'1' running"


def test_two_concurrent_starts_start_one_plugin_and_a_stopped_one_stays_stopped(tmp_path: Path) -> None:
    import uuid

    from tests.test_supervisor_stop import _tagged

    tag = uuid.uuid4().hex

    async def main() -> None:
        sup = AsyncSupervisor(lambda: faulty_config(tmp_path, env={"RESILIENCE_TAG": tag}), restart=FAST,
                              health_interval=None)
        try:
            await asyncio.gather(sup.start(), sup.start())
            assert len(_tagged(tag)) == 1, _tagged(tag)
        finally:
            await sup.stop()
        assert wait_until(lambda: not _tagged(tag), 10), _tagged(tag)
        with pytest.raises(ClientStateError, match="AsyncSupervisor of plugin .* was stopped; make a new one"):
            await sup.start()
        with pytest.raises(ClientStateError, match="AsyncSupervisor of plugin .* was stopped; make a new one"):
            await sup.dispense(PLUGIN_NAME)

    try:
        asyncio.run(main())
    finally:
        for pid in _tagged(tag):
            os.kill(pid, signal.SIGKILL)


def test_a_start_from_another_event_loop_while_the_first_one_starts_is_refused_typed(tmp_path: Path) -> None:
    # as AsyncClient's: asyncio's own RuntimeError (a future of another loop) is no plugbay error
    slow = ["sh", "-c", f"sleep 1; exec {PY} {FAULTY}"]  # the other loop surely meets the start under way
    sup = AsyncSupervisor(lambda: faulty_config(tmp_path, cmd=slow), restart=FAST, health_interval=None)

    async def main() -> object:
        starting = asyncio.ensure_future(sup.start())
        try:
            await asyncio.sleep(0.1)
            assert sup._starting is not None and sup._channel is None
            error = await start_from_another_loop(sup.start)
            await starting
            kv = await sup.dispense(PLUGIN_NAME)
            await kv.put("k", b"v")  # the first loop's start is unharmed
            return error
        finally:
            await sup.stop()

    assert_wrong_loop(asyncio.run(main()))


def test_concurrent_dispenses_of_a_name_get_one_stub(tmp_path: Path) -> None:
    # as the sync Supervisor's dispense: one stub per name (it follows the plugin across restarts)
    async def main() -> None:
        async with AsyncSupervisor(lambda: faulty_config(tmp_path), restart=FAST, health_interval=None) as sup:
            stubs = await asyncio.gather(*(sup.dispense(PLUGIN_NAME) for _ in range(3)))
            assert all(stub is stubs[0] for stub in stubs)
            assert await sup.dispense(PLUGIN_NAME) is stubs[0]

    asyncio.run(main())


def test_channel_ready_raises_once_the_restart_budget_is_spent(tmp_path: Path) -> None:
    from plugbay import RestartBudgetExhaustedError

    async def main() -> None:
        async with AsyncSupervisor(lambda: faulty_config(tmp_path), health_interval=None,
                                   restart=RestartPolicy(max_restarts=0, initial_backoff=0.01)) as sup:
            kv = await sup.dispense(PLUGIN_NAME)
            os.kill(int(await kv.get("__pid__")), signal.SIGKILL)
            assert await asyncio.to_thread(wait_until, lambda: sup.state == "failed", 10), sup.events
            with pytest.raises(RestartBudgetExhaustedError):
                await asyncio.wait_for(sup.channel.channel_ready(), 10)

    asyncio.run(main())


def test_a_failed_start_may_be_awaited_again_and_then_starts(tmp_path: Path) -> None:
    # as Supervisor.start() may be called again once its cause is fixed
    from plugbay import ClientConfig, PluginExitedError, ProcessRunner

    from tests.resilience_util import HANDSHAKE, PLUGINS

    attempts: list[int] = []

    def factory() -> Any:
        attempts.append(1)
        if len(attempts) == 1:  # the first plugin exits before its handshake
            return ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=20,
                                runner=ProcessRunner([PY, "-c", "import sys; sys.exit(3)"]))
        return faulty_config(tmp_path)

    async def main() -> None:
        sup = AsyncSupervisor(factory, restart=FAST, health_interval=None)
        try:
            with pytest.raises(PluginExitedError):
                await sup.start()
            await sup.start()  # tried again, not answered with the first start's error
            kv = await sup.dispense(PLUGIN_NAME)
            await kv.put("k", b"v")
            assert await kv.get("k") == b"v"
        finally:
            await sup.stop()

    asyncio.run(main())
    assert len(attempts) == 2


def test_a_cancelled_start_stops_the_supervisor_and_the_plugin_it_was_starting(tmp_path: Path) -> None:
    # as AsyncClient's cancelled start kills what it launched: nothing is left running or supervised
    import uuid

    from tests.race_util import wait_for_file
    from tests.test_supervisor_stop import _tagged

    tag, marker = uuid.uuid4().hex, tmp_path / "launched"
    slow = ["sh", "-c", f"touch {marker}; sleep 2; exec {PY} {FAULTY}"]

    async def main() -> None:
        sup = AsyncSupervisor(lambda: faulty_config(tmp_path, cmd=slow, env={"RESILIENCE_TAG": tag}),
                              restart=FAST, health_interval=0.2)
        try:
            starting = asyncio.ensure_future(sup.start())
            await asyncio.to_thread(wait_for_file, marker)
            starting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await starting
            assert sup.state == "stopped" and sup.current_client is None, sup.events
            with pytest.raises(ClientStateError, match="was stopped; make a new one"):
                await sup.start()
        finally:
            await sup.stop()

    try:
        asyncio.run(main())
        assert wait_until(lambda: not _tagged(tag), 10), _tagged(tag)
        assert wait_until(lambda: not sup_threads(), 10), sup_threads()
    finally:
        for pid in _tagged(tag):
            os.kill(pid, signal.SIGKILL)


def test_install_refuses_an_async_supervisor_and_its_channel(tmp_path: Path) -> None:
    from plugbay import CircuitBreaker, ConfigError, install

    async def main() -> None:
        async with AsyncSupervisor(lambda: faulty_config(tmp_path), restart=FAST, health_interval=None) as sup:
            for target in (sup, sup.channel):
                with pytest.raises(ConfigError, match="pass retry= and breaker= to the Supervisor"):
                    install(target, breaker=CircuitBreaker())
            kv = await sup.dispense(PLUGIN_NAME)
            first = int(await kv.get("__pid__"))
            os.kill(first, signal.SIGKILL)
            await asyncio.to_thread(wait_until, lambda: sup.current_client is None, 10)
            assert int(await kv.get("__pid__")) != first  # the ready gate held the call for the successor

    asyncio.run(main())


def test_after_the_budget_is_spent_each_async_call_gets_an_error_of_its_own(tmp_path: Path) -> None:
    from plugbay import RestartBudgetExhaustedError

    async def main() -> None:
        async with AsyncSupervisor(lambda: faulty_config(tmp_path), health_interval=None,
                                   retry=RetryPolicy(methods=["Get"], max_attempts=3, initial_backoff=0.01),
                                   restart=RestartPolicy(max_restarts=0, initial_backoff=0.01)) as sup:
            kv = await sup.dispense(PLUGIN_NAME)
            os.kill(int(await kv.get("__pid__")), signal.SIGKILL)
            assert await asyncio.to_thread(wait_until, lambda: sup.state == "failed", 10), sup.events
            errors = []
            for _ in range(20):
                with pytest.raises(RestartBudgetExhaustedError) as err:
                    await kv.get("k")
                errors.append(err.value)
            # one shared object would gather every call's traceback frames and retry notes
            assert len({id(e) for e in errors}) == len(errors)
            assert all(len(getattr(e, "__notes__", [])) <= 1 for e in errors)

    asyncio.run(main())


def test_an_async_supervisors_advice_and_budget_error_name_the_async_supervisor(tmp_path: Path) -> None:
    from plugbay import RestartBudgetExhaustedError

    def only_async(said: str) -> None:  # the one the user made, never the sync Supervisor it runs
        assert "AsyncSupervisor" in said and "Supervisor" not in said.replace("AsyncSupervisor", ""), said

    async def main() -> None:
        async with AsyncSupervisor(lambda: faulty_config(tmp_path), health_interval=None,
                                   restart=RestartPolicy(max_restarts=1, initial_backoff=0.01)) as sup:
            kv = await sup.dispense(PLUGIN_NAME)
            advice = []
            for _ in range(2):  # a death with a restart left, then one with the budget spent
                await kv.put("__slow__", b"1")
                pid, before = int(await kv.get("__pid__")), int(await kv.get("__calls__"))
                stuck = asyncio.ensure_future(kv.get("k"))  # not safe to repeat: it fails with the death
                while int(await kv.get("__calls__")) == before:  # until the plugin holds it
                    await asyncio.sleep(0.02)
                os.kill(pid, signal.SIGKILL)
                with pytest.raises(PluginDiedError) as died:
                    await stuck
                advice.append(str(died.value))
                if len(advice) == 1:
                    assert await sup.wait_running(30), sup.events
            assert "the AsyncSupervisor is restarting it" in advice[0]
            assert "its AsyncSupervisor will not restart it" in advice[1] and "make a new AsyncSupervisor" in advice[1]
            assert await asyncio.to_thread(wait_until, lambda: sup.state == "failed", 10), sup.events
            with pytest.raises(RestartBudgetExhaustedError) as spent:
                await kv.get("k")
            assert "so the AsyncSupervisor stopped restarting it" in str(spent.value)
            for said in (*advice, str(spent.value)):
                only_async(said)

    asyncio.run(main())


def test_async_with_refused_on_another_loop_leaves_the_async_supervisor_to_its_loop(tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncSupervisor(lambda: faulty_config(tmp_path), restart=FAST, health_interval=None) as sup:
            kv = await sup.dispense(PLUGIN_NAME)
            await kv.put("a", b"1")

            await assert_async_with_refused_on_another_loop(sup)
            # a refusal has no side effect: __aenter__ stopped the AsyncSupervisor this loop still uses
            assert sup.state == "running"
            assert await kv.get("a") == b"1"

    asyncio.run(main())


def test_a_stopped_or_loop_gone_async_supervisor_says_so_by_its_own_name(tmp_path: Path) -> None:
    sup = AsyncSupervisor(lambda: faulty_config(tmp_path), restart=FAST, health_interval=None)

    async def first() -> Any:
        await sup.start()
        kv = await sup.dispense(PLUGIN_NAME)
        await kv.put("a", b"1")
        return kv

    kv = asyncio.run(first())

    async def second() -> None:
        try:
            with pytest.raises(WrongLoop, match="AsyncSupervisor's calls run on .* that loop has closed") as caught:
                await kv.get("a")
            assert "await its stop() on any loop and make a new AsyncSupervisor" in str(caught.value)
            # refused here, not a stub whose every call fails with WrongLoop
            for use in (sup.start, lambda: sup.dispense(PLUGIN_NAME)):
                with pytest.raises(WrongLoop, match="AsyncSupervisor of plugin .* was started on another event loop"):
                    await use()
        finally:
            await sup.stop()

    asyncio.run(second())

    async def third() -> None:
        # stopped (from the second loop): neither the first loop nor a stop is any use; say it is stopped
        with pytest.raises(WrongLoop, match="this AsyncSupervisor was already stopped") as caught:
            await kv.get("a")
        assert "await its stop()" not in str(caught.value) and "make a new AsyncSupervisor" in str(caught.value)

    asyncio.run(third())


def test_a_stub_of_a_stopped_async_supervisor_names_the_async_supervisor(tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncSupervisor(lambda: faulty_config(tmp_path), restart=FAST, health_interval=None) as sup:
            kv = await sup.dispense(PLUGIN_NAME)
            await kv.put("a", b"1")
        with pytest.raises(ClientStateError, match="the AsyncSupervisor of plugin .* was stopped; make a new one"):
            await kv.get("a")  # through its ready gate, which said "the Supervisor"

    asyncio.run(main())
