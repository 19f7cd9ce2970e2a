"""AsyncClient's calls that a broken connection ended, against a real Go plugin: whether the plugin died is
judged by one wait for its exit to show, shared by all the calls that broke together (a wait each held a
thread of the client's executor each, one after another, so the last of many calls failed seconds late)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

from tests import gobuild

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402
from kvproto import kv_pb2  # noqa: E402

from plugbay import AsyncClient, ClientConfig, PluginDiedError, PluginUnavailableError, ProcessRunner  # noqa: E402

GUARD = 60.0  # the hang guard of a whole step
CALLS = 40


class ProbeCountingRunner(ProcessRunner):
    """A ProcessRunner that counts its bounded waits (the exit probe's; kill's grace is one too, not counted
    here: the test reads the count before it kills)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._lock = threading.Lock()
        self.bounded_waits = 0

    def wait(self, timeout: float | None = None) -> int | None:
        if timeout:
            with self._lock:
                self.bounded_waits += 1
        return super().wait(timeout)


class Hanging(logging.Handler):
    """Counts the plugin's "hanging during a call" lines: each is a call that reached it and now waits."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "hanging during a call" in record.getMessage():
            self.calls += 1


def only_child(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def test_calls_broken_together_share_one_wait_for_the_plugins_exit_to_show() -> None:
    # The Go plugin runs under a shell that outlives it: the connection breaks, the launched process runs on,
    # so each call's judge waits the whole wait for an exit that never shows, and says Unavailable.
    misbehave = gobuild.go_program_or_skip("misbehave")
    runner = ProbeCountingRunner(["sh", "-c", f"{misbehave}; sleep 60"],
                                 env={"MISBEHAVE_MODE": "kv", "MISBEHAVE_MAX_SECONDS": "60"})

    hanging = Hanging()

    async def main() -> None:
        config = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner)
        async with AsyncClient(config) as client:
            stub = (await client.dispense(PLUGIN_NAME))._stub
            await stub.Get(kv_pb2.GetRequest(key="__env__"))
            calls = [stub.Get(kv_pb2.GetRequest(key="__hang__"), timeout=GUARD) for _ in range(CALLS)]
            for _ in range(int(GUARD / 0.02)):  # every call reached the plugin
                if hanging.calls >= CALLS:
                    break
                await asyncio.sleep(0.02)
            assert hanging.calls == CALLS
            before = runner.bounded_waits
            assert runner.pid is not None
            os.kill(only_child(runner.pid), 9)
            errors = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), GUARD)
            waits = runner.bounded_waits - before
            assert all(isinstance(e, PluginUnavailableError) and not isinstance(e, PluginDiedError)
                       for e in errors), errors
            assert waits < CALLS // 4, waits  # not one per call

    logger = logging.getLogger("plugbay.plugin")
    logger.addHandler(hanging)
    try:
        asyncio.run(main())
    finally:
        logger.removeHandler(hanging)
