"""AsyncClient: tasks sharing one start() whose owner (the task that began it) is cancelled.

The owner's cancel stops the plugin it launched; a task that was only waiting for that start is told
so, not that a kill() it never made ended the client. A real go-plugin 1.0.1 Go program (misbehave,
mode silent: it never prints its handshake, so the start is still under way when the cancel comes).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests import gobuild
from tests.procs import descendants

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import AsyncClient, ClientConfig, ClientStateError  # noqa: E402

GUARD = 60.0  # a hang fails the test instead of stalling the run


def test_a_task_waiting_on_a_start_whose_owner_was_cancelled_is_told_so() -> None:
    binary = str(gobuild.go_program_or_skip("misbehave"))
    config = ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=[binary],
                          env={"MISBEHAVE_MODE": "silent", "MISBEHAVE_MAX_SECONDS": "60"}, start_timeout=50)

    async def main() -> tuple[BaseException, BaseException]:
        client = AsyncClient(config)
        owner = asyncio.create_task(client.start())
        await asyncio.sleep(0)  # the owner began the start ...
        waiter = asyncio.create_task(client.dispense(PLUGIN_NAME))
        for _ in range(500):  # ... the plugin runs (silent: the start waits for its handshake) ...
            if descendants(os.getpid()):
                break
            await asyncio.sleep(0.02)
        assert descendants(os.getpid()) and not waiter.done()  # ... and the waiter awaits that start
        owner.cancel()
        results = await asyncio.gather(owner, waiter, return_exceptions=True)
        await client.kill()
        return results[0], results[1]

    owner_end, waiter_end = asyncio.run(asyncio.wait_for(main(), GUARD))
    assert isinstance(owner_end, asyncio.CancelledError), repr(owner_end)
    assert isinstance(waiter_end, ClientStateError), repr(waiter_end)
    said = str(waiter_end)
    assert "the task that began its start() was cancelled" in said, said
    assert "make a new AsyncClient" in said and "killed while it started" not in said, said
    # what the start itself raised, the owner's kill having stopped it: it names the class the user made
    assert "stopped the plugin. Make a new AsyncClient to start it again" in str(waiter_end.__cause__)
