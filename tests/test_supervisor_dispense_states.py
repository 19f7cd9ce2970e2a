"""dispense() of a Supervisor and an AsyncSupervisor that gave up or was stopped: both refuse it alike, a
stub dispensed before included (the sync one handed back its cached stub after stop(), the async one
after giving up), against the KV example plugin (a real process)."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.resilience_util import KV_EXAMPLE, PLUGIN_NAME, PY, faulty_config, wait_until

from plugbay import AsyncSupervisor, ClientStateError, RestartBudgetExhaustedError, RestartPolicy, Supervisor


class _Sync:
    """The sync Supervisor behind the same awaitable calls as the async one, so one test serves both."""

    def __init__(self, config: Callable[[], Any], restart: RestartPolicy) -> None:
        self.sup = Supervisor(config, restart=restart, health_interval=None)

    async def start(self) -> None:
        self.sup.start()

    async def dispense(self, name: str) -> Any:
        return self.sup.dispense(name)

    async def stop(self) -> None:
        self.sup.stop()

    @property
    def sync_supervisor(self) -> Supervisor:
        return self.sup


def _make(kind: str, tmp_path: Path, restart: RestartPolicy) -> Any:
    def config() -> Any:
        return faulty_config(tmp_path, cmd=[PY, KV_EXAMPLE])
    if kind == "sync":
        return _Sync(config, restart)
    return AsyncSupervisor(config, restart=restart, health_interval=None)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_dispense_after_giving_up_and_after_stop_is_refused(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        sup = _make(kind, tmp_path, RestartPolicy(max_restarts=0))
        try:
            await sup.start()
            await sup.dispense(PLUGIN_NAME)
            client = sup.sync_supervisor.current_client
            assert client is not None
            os.kill(client.runner.pid, signal.SIGKILL)
            assert wait_until(lambda: sup.sync_supervisor.state == "failed", 30)
            with pytest.raises(RestartBudgetExhaustedError):
                await sup.dispense(PLUGIN_NAME)  # the name dispensed before
            await sup.stop()
            with pytest.raises(RestartBudgetExhaustedError):  # gave up first: that stays what it says
                await sup.dispense(PLUGIN_NAME)
        finally:
            await sup.stop()

        sup = _make(kind, tmp_path, RestartPolicy())
        try:
            await sup.start()
            kv = await sup.dispense(PLUGIN_NAME)
            put = kv.put("k", b"v")
            if inspect.isawaitable(put):
                await put
            await sup.stop()
            which = "Supervisor" if kind == "sync" else "AsyncSupervisor"
            with pytest.raises(ClientStateError, match=f"the {which} of plugin .* was stopped; make a new one"):
                await sup.dispense(PLUGIN_NAME)
            with pytest.raises(ClientStateError, match="was stopped; make a new one"):
                await sup.dispense("other")  # never dispensed: the same answer
        finally:
            await sup.stop()

    asyncio.run(main())
