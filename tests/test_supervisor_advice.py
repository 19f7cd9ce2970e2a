"""What a call told of its plugin's death is advised to do under a Supervisor: not to start a new Client
(the Client's advice to its own caller), but that the Supervisor restarts the plugin."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path

import pytest

from tests.resilience_util import PLUGIN_NAME, faulty_config, wait_until

from plugbay import (AsyncSupervisor, CallTimeoutError, Client, ClientStateError, ConfigError, PluginDiedError,
                     RestartPolicy, RetryPolicy, Supervisor, SupervisorEvent)
from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.core.resilience.waiting import RUNNING

FAST = RestartPolicy(max_restarts=3, window=120, initial_backoff=0.05, max_backoff=0.2)
# a backoff long enough to call while the plugin is dead and not yet restarted (stop() ends the wait)
SLOW = RestartPolicy(max_restarts=3, window=120, initial_backoff=60, max_backoff=60)


def _advised_a_restart(err: BaseException, kind: str = "Supervisor") -> None:
    text = str(err)
    assert "start a new Client" not in text, text
    if getattr(err, "sent", True):  # in flight: the plugin may have run it
        assert f"the {kind} is restarting it (as its RestartPolicy allows). Call it again only if" in text, text
    else:
        assert f"the {kind} is restarting it (as its RestartPolicy allows): call again" in text, text


def test_a_call_in_flight_when_the_plugin_dies_is_told_the_supervisor_restarts_it(tmp_path: Path) -> None:
    with Supervisor(lambda: faulty_config(tmp_path), restart=FAST, health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        with pytest.raises(PluginDiedError, match=r"died during the call: it exited with code 9") as died:
            kv.get("__die__")
        _advised_a_restart(died.value)
        assert kv.get("__tag__") == b""  # and the next call does reach the restarted plugin


def test_an_async_supervisors_call_in_flight_is_told_so_too(tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncSupervisor(lambda: faulty_config(tmp_path), restart=FAST, health_interval=None) as sup:
            kv = await sup.dispense(PLUGIN_NAME)
            with pytest.raises(PluginDiedError, match=r"died during the call") as died:
                await kv.get("__die__")
            _advised_a_restart(died.value, "AsyncSupervisor")  # the one the user made
            assert await kv.get("__tag__") == b""

    asyncio.run(main())


def test_a_stream_opened_while_the_plugin_is_dead_is_told_the_supervisor_restarts_it(tmp_path: Path) -> None:
    with Supervisor(lambda: faulty_config(tmp_path), restart=SLOW, health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        health = health_pb2_grpc.HealthStub(sup.channel)
        os.kill(int(kv.get("__pid__")), signal.SIGKILL)
        assert wait_until(lambda: sup.state == "restarting", 10)
        with pytest.raises(PluginDiedError, match=r"is gone: it exited with code -9") as gone:
            next(iter(health.Watch(health_pb2.HealthCheckRequest(service=""))))
        _advised_a_restart(gone.value)


def test_a_supervisor_that_restarts_nothing_says_so(tmp_path: Path) -> None:
    with Supervisor(lambda: faulty_config(tmp_path), restart=RestartPolicy(max_restarts=0),
                    health_interval=None) as sup:
        with pytest.raises(PluginDiedError, match=r"died during the call") as died:
            sup.dispense(PLUGIN_NAME).get("__die__")
    assert "its Supervisor does not restart it (RestartPolicy(max_restarts=0))" in str(died.value), str(died.value)


def test_a_clients_own_caller_is_still_told_to_start_a_new_client(tmp_path: Path) -> None:
    with Client(faulty_config(tmp_path)) as client:
        with pytest.raises(PluginDiedError, match=r"(?s)died during the call.*; start a new Client"):
            client.dispense(PLUGIN_NAME).get("__die__")


def test_the_death_that_spends_the_budget_is_not_told_to_call_again(tmp_path: Path) -> None:
    # The call fails before the monitor has seen the death (the state still says running): the advice
    # reads the budget, not only the state
    once = RestartPolicy(max_restarts=1, window=120, initial_backoff=0.05, max_backoff=0.05)
    with Supervisor(lambda: faulty_config(tmp_path), restart=once, health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        with pytest.raises(PluginDiedError) as first:
            kv.get("__die__")
        _advised_a_restart(first.value)
        assert wait_until(lambda: sup.state == "running" and sup.restarts == 1, 20), sup.state
        with pytest.raises(PluginDiedError) as last:
            kv.get("__die__")
    assert "call again" not in str(last.value), str(last.value)
    assert "its RestartPolicy's budget is spent" in str(last.value), str(last.value)


@pytest.mark.parametrize("timeout", [None, float("nan"), "1"])
def test_an_async_supervisors_wait_running_checks_its_timeout_as_the_sync_one_does(
        tmp_path: Path, timeout: object) -> None:
    async def main() -> None:
        async with AsyncSupervisor(lambda: faulty_config(tmp_path), restart=FAST, health_interval=None) as sup:
            with pytest.raises(ConfigError, match=r"AsyncSupervisor.wait_running\(\): timeout must be a number"):
                await asyncio.wait_for(sup.wait_running(timeout), 30)  # type: ignore[arg-type]
            assert await sup.wait_running(10**400)  # a whole number too big for a float: no bound

    asyncio.run(main())


def test_reattach_config_of_a_plugin_dead_before_the_monitor_acts_says_the_supervisor_restarts_it(
        tmp_path: Path) -> None:
    seen, go_on = threading.Event(), threading.Event()

    def on_event(event: SupervisorEvent) -> None:
        if event.kind == "failure":  # the monitor saw the death and has not dropped the dead Client yet
            seen.set()
            go_on.wait(10)

    with Supervisor(lambda: faulty_config(tmp_path), restart=FAST, health_interval=None, on_event=on_event) as sup:
        try:
            os.kill(sup.reattach_config().runner["pid"], signal.SIGKILL)
            assert seen.wait(10)
            with pytest.raises(ClientStateError, match="nothing to reattach to") as refused:
                sup.reattach_config()
        finally:
            go_on.set()
        assert "make a new Client" not in str(refused.value)
        assert "the Supervisor is restarting it (as its RestartPolicy allows): ask reattach_config() again" \
            in str(refused.value)
        assert sup.wait_running(30)
        sup.reattach_config()  # the restarted plugin's


def test_a_factorys_later_config_sets_the_call_timeout_of_the_restarted_plugin(tmp_path: Path) -> None:
    timeouts = iter([1.0, 5.0])
    with Supervisor(lambda: faulty_config(tmp_path, call_timeout=next(timeouts, 5.0)), restart=FAST,
                    health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        with pytest.raises(CallTimeoutError):
            kv.get("__sleep__")  # 1.5 s against the first config's 1 s
        os.kill(int(kv.get("__pid__")), signal.SIGKILL)
        assert wait_until(lambda: sup.restarts == 1 and sup.state == RUNNING, 30)
        assert sup.call_timeout == 5.0
        assert kv.get("__sleep__") == b"slept"  # the restarted plugin's config allows it


def test_a_retried_wait_for_a_restart_says_each_try_waited_and_how_long_in_all(tmp_path: Path) -> None:
    # each try waits the default deadline for the restart (no overall_timeout): "waited 0.3s" alone would
    # hide the second try and its backoff
    async def main() -> str:
        async with AsyncSupervisor(lambda: faulty_config(tmp_path, call_timeout=0.3), restart=SLOW,
                                   retry=RetryPolicy(max_attempts=2, initial_backoff=0.01, methods=["Get"]),
                                   health_interval=None) as sup:
            kv = await sup.dispense(PLUGIN_NAME)
            os.kill(int(await kv.get("__pid__")), signal.SIGKILL)
            assert await asyncio.to_thread(wait_until, lambda: sup.state == "restarting", 10)
            with pytest.raises(CallTimeoutError) as err:
                await kv.get("k")
            return str(err.value)

    said = asyncio.run(main())
    assert "waited 0.3s for the AsyncSupervisor to restart the plugin" in said and "on try 2 of 2" in said, said
    assert "each try was bounded by 0.3s" in said and "s in all" in said, said
    assert "RetryPolicy(overall_timeout=...)" in said and "Pass a larger timeout=" not in said, said


def _told_it_may_have_run(err: BaseException, kind: str) -> None:
    text = str(err)
    assert "not completed" not in text, text  # it was: the file is written
    assert "the plugin may have run it, in part or whole, before it died" in text, text
    assert f"the {kind} is restarting it (as its RestartPolicy allows). Call it again only if running it twice" \
           " is harmless" in text, text
    assert ": call again" not in text, text


def test_a_call_the_plugin_ran_before_dying_is_not_said_to_be_incomplete(tmp_path: Path) -> None:
    # a Put the plugin applied, then died before answering: "The call was not completed ... call again" bid
    # the caller to apply a non-idempotent call twice
    with Supervisor(lambda: faulty_config(tmp_path), restart=FAST, health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        with pytest.raises(PluginDiedError, match=r"died during the call: it exited with code 9") as died:
            kv.put("__apply_then_die__", b"once")
        assert (tmp_path / "applied").read_bytes() == b"once"
        _told_it_may_have_run(died.value, "Supervisor")
        assert kv.get("__tag__") == b""  # the restarted plugin answers


def test_an_async_supervisors_call_the_plugin_ran_is_told_the_same(tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncSupervisor(lambda: faulty_config(tmp_path), restart=FAST, health_interval=None) as sup:
            kv = await sup.dispense(PLUGIN_NAME)
            with pytest.raises(PluginDiedError, match=r"died during the call") as died:
                await kv.put("__apply_then_die__", b"once")
            assert (tmp_path / "applied").read_bytes() == b"once"
            _told_it_may_have_run(died.value, "AsyncSupervisor")

    asyncio.run(main())


def test_a_clients_call_the_plugin_ran_is_not_said_to_be_incomplete(tmp_path: Path) -> None:
    with Client(faulty_config(tmp_path)) as client:
        with pytest.raises(PluginDiedError, match=r"died during the call") as died:
            client.dispense(PLUGIN_NAME).put("__apply_then_die__", b"once")
    assert (tmp_path / "applied").read_bytes() == b"once"
    text = str(died.value)
    assert "not completed" not in text and "the plugin may have run it" in text and "start a new Client" in text, text


def test_a_call_waiting_through_the_first_backoff_is_not_told_of_a_restart_0(tmp_path: Path) -> None:
    # "(restart 0, ...)" read as a restart numbered 0 under way, while the Supervisor slept its backoff
    with Supervisor(lambda: faulty_config(tmp_path, call_timeout=0.5), restart=SLOW, health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        os.kill(int(kv.get("__pid__")), signal.SIGKILL)
        assert wait_until(lambda: sup.state == "restarting", 10)
        with pytest.raises(CallTimeoutError) as err:
            kv.get("k")
    said = str(err.value)
    assert "to restart the plugin (restarts so far: 0, last failure: the plugin exited" in said, said
    assert "(restart 0" not in said, said
