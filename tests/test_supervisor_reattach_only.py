"""A (Async)Supervisor given reattach= and a ClientConfig with no cmd= (docs/resilience.md, "Reattach first"):
it attaches to the plugin a previous host left running and serves calls; a fresh plugin it cannot start (a
restart, or the start after a failed reattach), and says so: pass cmd= too. The ClientConfig's own check
only refuses a cmd-less config when no reattach= comes with it."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import gone
from tests.resilience_util import HANDSHAKE, PLUGIN_NAME, PLUGINS, faulty_config, wait_until

from plugbay import (AsyncSupervisor, Client, ClientConfig, ConfigError, ReattachConfig, RestartBudgetExhaustedError,
                     RestartPolicy, Supervisor)
from plugbay.core.resilience.supervisor import FAILED

ONE_RESTART = RestartPolicy(max_restarts=1, window=120, initial_backoff=0.05, max_backoff=0.2)
CANNOT = "was given reattach= and no cmd=, so it cannot start a new plugin .*: pass cmd= too"


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


def test_its_restart_fails_saying_to_pass_cmd(owner: Client) -> None:
    with Supervisor(cmd_less(), reattach=owner.reattach_config(), restart=ONE_RESTART, health_interval=None) as sup:
        kv = sup.dispense(PLUGIN_NAME)
        pid = int(kv.get("__pid__"))
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: gone(pid), 10)
        assert wait_until(lambda: sup.state == FAILED, 30)
        failed = [e.detail for e in sup.events if e.kind == "restart_failed"]
        assert len(failed) == 1, list(sup.events)
        assert failed[0].startswith("restart failed: ConfigError: this Supervisor was given reattach= and no cmd=")
        assert "exactly one of" not in failed[0]
        with pytest.raises(RestartBudgetExhaustedError, match=CANNOT):
            kv.get("k")


def test_a_failed_reattach_is_not_followed_by_a_fresh_plugin_it_cannot_start(owner: Client) -> None:
    stale = owner.reattach_config()
    owner.kill()
    sup = Supervisor(cmd_less(), reattach=stale, health_interval=None)
    with pytest.raises(ConfigError, match=f"^this Supervisor {CANNOT}"):
        sup.start()
    assert [e.kind for e in sup.events] == ["reattach_failed", "start_failed"]
    sup.stop()


def test_an_async_supervisor_with_reattach_and_no_cmd_attaches_and_its_restart_says_to_pass_cmd(
        owner: Client) -> None:
    reattach: ReattachConfig = owner.reattach_config()

    async def main() -> None:
        sup = AsyncSupervisor(cmd_less(), reattach=reattach, restart=ONE_RESTART, health_interval=None)
        async with sup:
            kv = await sup.dispense(PLUGIN_NAME)
            await kv.put("k", b"v")
            assert await kv.get("k") == b"v"
            pid = int(await kv.get("__pid__"))
            assert pid == owner.runner.pid and [e.kind for e in sup.events] == ["reattached"]
            os.kill(pid, signal.SIGKILL)
            assert wait_until(lambda: gone(pid), 10)
            assert wait_until(lambda: sup.state == FAILED, 30)
            failed = [e.detail for e in sup.events if e.kind == "restart_failed"]
            assert len(failed) == 1 and "ConfigError: this AsyncSupervisor " in failed[0], failed
            with pytest.raises(RestartBudgetExhaustedError, match=CANNOT):
                await kv.get("k")

    asyncio.run(main())


def test_an_async_supervisor_whose_reattach_fails_says_to_pass_cmd(owner: Client) -> None:
    stale = owner.reattach_config()
    owner.kill()

    async def main() -> None:
        sup = AsyncSupervisor(cmd_less(), reattach=stale, health_interval=None)
        try:
            with pytest.raises(ConfigError, match=f"^this AsyncSupervisor {CANNOT}"):
                await sup.start()
        finally:
            await sup.stop()

    asyncio.run(main())
