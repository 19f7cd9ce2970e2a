"""A (Async)Supervisor given reattach= and a ClientConfig with no cmd= (docs/resilience.md, "Reattach first"):
it attaches to the plugin a previous host left running and serves calls; a fresh plugin it cannot start (a
restart, or the start after a failed reattach), and says so: pass cmd= too. When that plugin fails it gives
up at once, whatever its RestartPolicy: no try to restart could work. A factory is asked again at each
restart (it may return cmd= then), so its Supervisor goes on restarting. The ClientConfig's own check only
refuses a cmd-less config when no reattach= comes with it."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import gone
from tests.resilience_util import HANDSHAKE, PLUGIN_NAME, PLUGINS, faulty_config, wait_until

from plugbay import (AsyncSupervisor, Client, ClientConfig, ConfigError, PluginDiedError, ReattachConfig,
                     RestartBudgetExhaustedError, RestartPolicy, Supervisor)
from plugbay.core.resilience.restart import CannotRestartError
from plugbay.core.resilience.supervisor import FAILED, RUNNING

NO_REATTACH = (r"could not reattach \(.+\) and cannot start a new plugin instead: it was given no cmd=; pass cmd="
               r" too, {kind}\(ClientConfig\(\.\.\., cmd=\[\.\.\.\]\), reattach=\.\.\.\)$")
GAVE_UP = (r"plugin 'kv' failed \(the plugin .*\) and the {kind} did not restart it: it was given reattach= and no"
           r" cmd=, so it cannot start a new plugin to replace the one it reattached to: pass cmd= too \(in a new"
           r" {kind}: {kind}\(ClientConfig\(\.\.\., cmd=\[\.\.\.\]\), reattach=\.\.\.\)\)")
# the default policy (5 tries, ~5 s of backoff), and one whose backoff outlasts its window: its tries never
# filled the budget, so it never gave up
POLICIES = [pytest.param(None, id="default-policy"),
            pytest.param(RestartPolicy(max_restarts=2, window=1, initial_backoff=1.2, max_backoff=1.2, jitter=0),
                         id="backoff-beyond-window")]


def cmd_less() -> ClientConfig:
    return ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, start_timeout=30.0)


@pytest.fixture
def owner(tmp_path: Path) -> Iterator[Client]:
    """The plugin a previous host left running (this Client plays that host; it kills the plugin at the end)."""
    client = Client(faulty_config(tmp_path))
    client.start()
    try:
        yield client
    finally:
        client.kill()


def test_a_supervisor_with_reattach_and_no_cmd_attaches_and_serves_calls(owner: Client) -> None:
    pid = owner.runner.pid
    with Supervisor(cmd_less(), reattach=owner.reattach_config(), restart=RestartPolicy(max_restarts=0),
                    health_interval=None) as sup:
        assert [e.kind for e in sup.events] == ["reattached"]
        kv = sup.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        assert kv.get("k") == b"v" and int(kv.get("__pid__")) == pid


def _gave_up_at_once(events: list, error: BaseException, kind: str) -> None:
    """It gave up at the plugin's first failure, saying to pass cmd=, with no word of a budget."""
    assert [e.kind for e in events] == ["reattached", "failure", "gave_up"], events
    assert type(error) is CannotRestartError and isinstance(error, RestartBudgetExhaustedError)
    assert "max_restarts" not in str(error) and "budget" not in str(error) and "window" not in str(error), error
    assert events[-1].detail == str(error) and events[-1].restarts == 0


@pytest.mark.parametrize("policy", POLICIES)
def test_it_gives_up_at_the_plugins_first_failure_saying_to_pass_cmd(owner: Client,
                                                                      policy: RestartPolicy | None) -> None:
    with Supervisor(cmd_less(), reattach=owner.reattach_config(), restart=policy, health_interval=None,
                    name="kv") as sup:
        kv = sup.dispense(PLUGIN_NAME)
        pid = int(kv.get("__pid__"))
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: gone(pid), 10)
        assert wait_until(lambda: sup.state == FAILED, 30), list(sup.events)
        assert sup.restarts == 0 and not sup.can_restart
        with pytest.raises(CannotRestartError, match=GAVE_UP.format(kind="Supervisor")) as raised:
            kv.get("k")
        _gave_up_at_once(list(sup.events), raised.value, "Supervisor")
        with pytest.raises(CannotRestartError):  # raised again, as the same type, by every call and wait
            sup.wait_running(0)


def _told_nothing_restarts_it(error: BaseException, kind: str) -> None:
    text = str(error)
    assert f"its {kind} cannot restart it: it was given reattach= and no cmd= (pass cmd= too); make a new {kind}" \
        in text, text
    assert "call again" not in text and "restarting" not in text and "start a new Client" not in text, text


def test_a_call_in_flight_when_the_plugin_dies_is_told_nothing_restarts_it(owner: Client) -> None:
    with Supervisor(cmd_less(), reattach=owner.reattach_config(), health_interval=None, name="kv") as sup:
        kv = sup.dispense(PLUGIN_NAME)
        with pytest.raises(PluginDiedError, match="died during the call") as died:
            kv.get("__die__")
        _told_nothing_restarts_it(died.value, "Supervisor")
        assert wait_until(lambda: sup.state == FAILED, 30), list(sup.events)


def test_an_async_supervisors_call_in_flight_is_told_so_too(owner: Client) -> None:
    reattach: ReattachConfig = owner.reattach_config()

    async def main() -> None:
        async with AsyncSupervisor(cmd_less(), reattach=reattach, health_interval=None, name="kv") as sup:
            kv = await sup.dispense(PLUGIN_NAME)
            with pytest.raises(PluginDiedError, match="died during the call") as died:
                await kv.get("__die__")
            _told_nothing_restarts_it(died.value, "AsyncSupervisor")

    asyncio.run(main())


def test_a_factory_returning_no_cmd_is_asked_again_and_its_cmd_restarts_the_plugin(owner: Client,
                                                                                   tmp_path: Path) -> None:
    made: list[ClientConfig] = []

    def factory() -> ClientConfig:  # first the cmd-less base of the reattach, then a config that starts one
        made.append(cmd_less() if not made else faulty_config(tmp_path))
        return made[-1]

    with Supervisor(factory, reattach=owner.reattach_config(), health_interval=None) as sup:
        assert sup.can_restart
        kv = sup.dispense(PLUGIN_NAME)
        pid = int(kv.get("__pid__"))
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: gone(pid), 10)
        assert sup.wait_running(60) and sup.state == RUNNING
        assert int(kv.get("__pid__")) != pid and len(made) == 2
        assert [e.kind for e in sup.events] == ["reattached", "failure", "restarting", "restarted"]


def test_a_failed_reattach_is_not_followed_by_a_fresh_plugin_it_cannot_start(owner: Client) -> None:
    stale = owner.reattach_config()
    owner.kill()
    sup = Supervisor(cmd_less(), reattach=stale, health_interval=None)
    with pytest.raises(ConfigError, match="^this Supervisor " + NO_REATTACH.format(kind="Supervisor")) as raised:
        sup.start()
    assert [e.kind for e in sup.events] == ["reattach_failed", "start_failed"]
    _says_why_the_reattach_failed(raised.value, sup.events[0].detail)
    sup.stop()


def _says_why_the_reattach_failed(error: BaseException, reattach_failed: str) -> None:
    """The error names the reattach's own failure, the one the reattach_failed event told, and chains it."""
    cause = error.__cause__
    assert cause is not None and reattach_failed == f"{type(cause).__name__}: {cause}"
    assert f"could not reattach ({reattach_failed}) and cannot start" in str(error), error


@pytest.mark.parametrize("policy", POLICIES)
def test_an_async_supervisor_with_reattach_and_no_cmd_attaches_and_gives_up_at_the_first_failure(
        owner: Client, policy: RestartPolicy | None) -> None:
    reattach: ReattachConfig = owner.reattach_config()

    async def main() -> None:
        sup = AsyncSupervisor(cmd_less(), reattach=reattach, restart=policy, health_interval=None, name="kv")
        async with sup:
            kv = await sup.dispense(PLUGIN_NAME)
            await kv.put("k", b"v")
            assert await kv.get("k") == b"v"
            pid = int(await kv.get("__pid__"))
            assert pid == owner.runner.pid and [e.kind for e in sup.events] == ["reattached"]
            os.kill(pid, signal.SIGKILL)
            assert wait_until(lambda: gone(pid), 10)
            assert wait_until(lambda: sup.state == FAILED, 30), sup.events
            with pytest.raises(CannotRestartError, match=GAVE_UP.format(kind="AsyncSupervisor")) as raised:
                await kv.get("k")
            _gave_up_at_once(sup.events, raised.value, "AsyncSupervisor")

    asyncio.run(main())


def test_an_async_supervisor_whose_reattach_fails_says_to_pass_cmd(owner: Client) -> None:
    stale = owner.reattach_config()
    owner.kill()

    async def main() -> None:
        sup = AsyncSupervisor(cmd_less(), reattach=stale, health_interval=None)
        try:
            said = "^this AsyncSupervisor " + NO_REATTACH.format(kind="AsyncSupervisor")
            with pytest.raises(ConfigError, match=said) as raised:
                await sup.start()
            assert [e.kind for e in sup.events] == ["reattach_failed", "start_failed"]
            _says_why_the_reattach_failed(raised.value, sup.events[0].detail)
        finally:
            await sup.stop()

    asyncio.run(main())


def test_a_call_cut_by_a_health_kill_is_told_nothing_restarts_it(owner: Client) -> None:
    """Its health stayed bad: the Supervisor ends the plugin, as stop() would, and gives up. The call that
    kill cut was told "the Supervisor restarted plugin ...; later calls go to the restarted plugin"."""
    import threading

    outcome: list[BaseException] = []
    with Supervisor(cmd_less(), reattach=owner.reattach_config(), health_interval=0.2, unhealthy_grace=0.5,
                    name="kv") as sup:
        kv = sup.dispense(PLUGIN_NAME)
        kv.put("__slow__", b"1")  # the next Get sleeps 10 s: in flight when the kill comes

        def stuck() -> None:
            try:
                kv.get("stuck")
            except BaseException as exc:
                outcome.append(exc)

        caller = threading.Thread(target=stuck)
        caller.start()
        kv.put("__health__", b"NOT_SERVING")
        caller.join(60)
        assert not caller.is_alive() and len(outcome) == 1, outcome
        assert wait_until(lambda: sup.state == FAILED, 30), list(sup.events)
    text = str(outcome[0])
    assert isinstance(outcome[0], PluginDiedError), repr(outcome[0])
    assert "ended plugin 'kv', which it judged unhealthy" in text and "cannot restart it" in text, text
    assert "the plugin may have run it, in part or whole, before it was ended. The call was not resent" in text, text
    assert "Supervisor(ClientConfig(..., cmd=[...]), reattach=...)" in text, text
    assert "later calls go to the restarted plugin" not in text, text
