"""AsyncClient: tasks sharing one start() whose owner (the task that began it) is cancelled.

The owner's cancel stops the plugin it launched (a reattach lets go of it, an AsyncRemoteClient closes its
connections); a task that was only waiting for that start is told so, not that a kill() it never made ended
the client, nor that the start went well when the owner's cancel came as it ended. A real go-plugin 1.0.1
Go program (misbehave, mode silent: it never prints its handshake, so the start is still under way when the
cancel comes), the kv example plugin, and the streaming example served on the network.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests import gobuild
from tests.procs import descendants

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import AsyncClient, AsyncSupervisor, Client, ClientConfig, ClientStateError  # noqa: E402
from tests.test_network_dead_replica import certs, streamers  # noqa: E402,F401 (fixtures)

GUARD = 60.0  # a hang fails the test instead of stalling the run


def silent_plugin() -> ClientConfig:
    """A plugin that runs but never prints its handshake: its start is under way until the owner's cancel."""
    binary = str(gobuild.go_program_or_skip("misbehave"))
    return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=[binary],
                        env={"MISBEHAVE_MODE": "silent", "MISBEHAVE_MAX_SECONDS": "60"}, start_timeout=50)


async def owner_cancelled_mid_start(client: Any, wait: Callable[[], Awaitable[Any]]) -> tuple[Any, Any]:
    """What the owner of ``client``'s start, cancelled while the plugin runs, and a task that was waiting
    on that start (by ``wait``) ended with."""
    owner = asyncio.create_task(client.start())
    await asyncio.sleep(0)  # the owner began the start ...
    waiter = asyncio.create_task(wait())
    while not descendants(os.getpid()):  # ... the plugin runs (silent: the start waits for its handshake) ...
        await asyncio.sleep(0.02)  # (a plugin that never comes is GUARD's to fail)
    assert not waiter.done()  # ... and the waiter awaits that start
    owner.cancel()
    results = await asyncio.gather(owner, waiter, return_exceptions=True)
    return results[0], results[1]


def test_a_task_waiting_on_a_start_whose_owner_was_cancelled_is_told_so() -> None:
    config = silent_plugin()

    async def main() -> tuple[Any, Any]:
        client = AsyncClient(config)
        ends = await owner_cancelled_mid_start(client, lambda: client.dispense(PLUGIN_NAME))
        await client.kill()
        return ends

    owner_end, waiter_end = asyncio.run(asyncio.wait_for(main(), GUARD))
    said = said_to_waiter(owner_end, waiter_end)
    assert "make a new AsyncClient" in said and "killed while it started" not in said, said
    # what the start itself raised, the owner's kill having stopped it: it names the class the user made
    assert "stopped the plugin. Make a new AsyncClient to start it again" in str(waiter_end.__cause__)


def test_an_async_supervisors_task_waiting_on_a_start_whose_owner_was_cancelled_is_told_so() -> None:
    config = silent_plugin()

    async def main() -> tuple[Any, Any]:
        sup = AsyncSupervisor(config)
        ends = await owner_cancelled_mid_start(sup, sup.start)
        await sup.stop()
        return ends

    owner_end, waiter_end = asyncio.run(asyncio.wait_for(main(), GUARD))
    said = said_to_waiter(owner_end, waiter_end)
    assert "the task that began its start() was cancelled, which stops the AsyncSupervisor" in said, said
    assert "make a new AsyncSupervisor" in said and "was stopped while it started" not in said, said


KV_PLUGIN = [sys.executable, str(REPO / "examples" / "kv" / "plugin.py")]


async def owner_cancelled_as_the_start_ends(client: Any) -> tuple[BaseException | None, BaseException | None]:
    """The start ends well, and its owner's cancel comes before the owner resumes: the waiter's wait on
    that start ends as well as the start did, while the owner's cancel undoes the start."""
    owner = asyncio.create_task(client.start())
    await asyncio.sleep(0)  # the owner began the start ...
    waiter = asyncio.create_task(client.start())
    await asyncio.sleep(0)  # ... and the waiter awaits it; both are woken once it ends, the owner first
    client._starting.add_done_callback(lambda _: owner.cancel())  # after both: before either resumes
    results = await asyncio.gather(owner, waiter, return_exceptions=True)
    return results[0], results[1]


def said_to_waiter(owner_end: Any, waiter_end: Any) -> str:
    assert isinstance(owner_end, asyncio.CancelledError), repr(owner_end)
    assert isinstance(waiter_end, ClientStateError), repr(waiter_end)  # not start() returning None
    said = str(waiter_end)
    assert "the task that began its start() was cancelled, which " in said and "make a new " in said, said
    return said


def test_a_start_that_ended_as_its_owner_was_cancelled_is_refused_to_its_waiter() -> None:
    async def main() -> tuple[Any, Any, bool]:
        client = AsyncClient(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=KV_PLUGIN))
        ends = await owner_cancelled_as_the_start_ends(client)
        gone = not descendants(os.getpid())  # the owner's cancel killed it before the cancel went on
        await client.kill()
        return *ends, gone

    owner_end, waiter_end, gone = asyncio.run(asyncio.wait_for(main(), GUARD))
    assert "which stops the plugin it launched" in said_to_waiter(owner_end, waiter_end)
    assert gone


@pytest.mark.usefixtures("in_tmp")  # the KV example stores its key in a kv_<key> file where it runs
def test_a_reattach_that_ended_as_its_owner_was_cancelled_leaves_the_plugin_running() -> None:
    with Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=KV_PLUGIN)) as host:
        host.dispense(PLUGIN_NAME).put("shared", b"kept")

        async def main() -> tuple[Any, Any]:
            client = AsyncClient(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                                              reattach=host.reattach_config()))
            ends = await owner_cancelled_as_the_start_ends(client)
            await client.close()
            return ends

        owner_end, waiter_end = asyncio.run(asyncio.wait_for(main(), GUARD))
        said = said_to_waiter(owner_end, waiter_end)
        assert "which abandons that start and leaves the plugin running" in said and "launched" not in said, said
        assert host.dispense(PLUGIN_NAME).get("shared") == b"kept"  # another host's: still served


def test_an_async_supervisors_start_that_ended_as_its_owner_was_cancelled_is_refused_to_its_waiter() -> None:
    async def main() -> tuple[Any, Any]:
        sup = AsyncSupervisor(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=KV_PLUGIN))
        ends = await owner_cancelled_as_the_start_ends(sup)
        await sup.stop()
        return ends

    owner_end, waiter_end = asyncio.run(asyncio.wait_for(main(), GUARD))
    assert "which stops the AsyncSupervisor and the plugin" in said_to_waiter(owner_end, waiter_end)


def test_an_async_remote_clients_start_that_ended_as_its_owner_was_cancelled_is_refused_to_its_waiter(
        streamers: list[Any], certs: Any) -> None:
    from plugbay import AsyncRemoteClient
    from tests.test_network_dead_replica import _first_config

    async def main() -> tuple[Any, Any]:
        client = AsyncRemoteClient(_first_config(streamers, certs))
        ends = await owner_cancelled_as_the_start_ends(client)
        await client.kill()
        return ends

    owner_end, waiter_end = asyncio.run(asyncio.wait_for(main(), GUARD))
    said = said_to_waiter(owner_end, waiter_end)
    assert "which closes the connections it made to the plugin's endpoints" in said and "launched" not in said, said
