"""Client.kill() while a host callback handler still runs: the plugin goes, the handler is not waited for.

Closing the broker stopped each brokered server and joined its workers, so kill() waited for as long
as the handler ran (for ever: one that never returns) and the plugin was not killed meanwhile.
go-plugin's broker Close() does not wait for handlers either; the handler's reply goes nowhere.

Real parts: the go-plugin 1.0.1 Go counter plugin as a child process dialing the host's callback.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugbay import Client, ClientConfig
from plugbay.errors import PlugbayError
from tests.gobuild import go_program_or_skip
from tests.test_broker_stuck_handler import Stuck, brokered_workers
from tests.thread_util import wait_for

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "counter"))
from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin  # noqa: E402

pytestmark = pytest.mark.go

BOUND = 15.0  # far above the 1 s grace close() gives running calls: only a wait for the handler exceeds it


@pytest.fixture()
def go_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    plugin = str(go_program_or_skip("counter_plugin"))
    folder = tempfile.mkdtemp(prefix="bkc", dir="/tmp")  # short: unix socket paths stay under 108 bytes
    monkeypatch.chdir(folder)  # the Go counter plugin keeps its values in files named kv_<key>
    yield plugin
    shutil.rmtree(folder, ignore_errors=True)


def _put_calling_back(counter: Any, held: object, errors: list[BaseException]) -> threading.Thread:
    """counter.put() with the host callback ``held``, which the plugin calls mid-Put, on a thread of its own;
    the error the call ends with (the plugin gone mid-call) is added to ``errors``."""
    def put() -> None:
        try:
            counter.put("k", 1, held)
        except BaseException as exc:
            errors.append(exc)

    caller = threading.Thread(target=put)
    caller.start()
    return caller


def _kill_aside(client: Client, bound: float) -> threading.Thread:
    """client.kill() on a thread of its own, waited for ``bound`` seconds at most (still alive: it held)."""
    killer = threading.Thread(target=client.kill, daemon=True)
    killer.start()
    killer.join(bound)
    return killer


def test_kill_does_not_wait_for_a_running_callback_handler(go_plugin: str) -> None:
    held = Stuck()  # a callback that does not return until released
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()}, cmd=[go_plugin]))
    caller: threading.Thread | None = None
    try:
        client.start()
        counter = client.dispense(PLUGIN_NAME)
        pid = client.runner.pid
        assert pid is not None
        errors: list[BaseException] = []
        caller = _put_calling_back(counter, held, errors)
        assert held.entered.wait(10), "the plugin never called the host's callback"

        killer = _kill_aside(client, BOUND)
        assert not killer.is_alive(), "Client.kill() waited for the callback handler still running"
        assert not os.path.exists(f"/proc/{pid}"), f"plugin process {pid} outlived Client.kill()"
        caller.join(BOUND)
        assert not caller.is_alive() and errors, "the call that made the callback did not end with the plugin"
        assert brokered_workers() >= 1  # the handler still runs: nobody waited for it
    finally:
        held.release.set()  # its reply goes nowhere: nothing crashes
        client.kill()
        if caller is not None:
            caller.join(BOUND)
    wait_for(lambda: brokered_workers() == 0, "the handler's worker to end once it returned", timeout=10)


class BlocksItsLoop:
    """An ``async def`` callback that blocks the event loop it runs on (a blocking wait in a coroutine,
    a common slip) until released: no cancel can reach it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.done = threading.Event()

    async def sum(self, a: int, b: int) -> int:
        self.entered.set()
        self.release.wait(60)
        self.done.set()
        return a + b


# A hang guard, not a measurement, and a deliberate bound on kill_grace's promise, kept generous for a
# loaded machine: kill() held about 6 s for this handler whatever kill_grace said (the brokered calls'
# fixed 1 s, then about 5 s for plugbay's asyncio handler loop to end under a coroutine that blocks it);
# with kill_grace=0 it now gives the loop LOOP_FLOOR (0.25 s) and goes on, about 0.3 s in all
GUARD = 5.0


def test_kill_gives_an_async_callback_that_blocks_its_loop_no_more_than_kill_grace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)  # the Python counter plugin keeps its values in files named kv_<key>
    held = BlocksItsLoop()
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()}, kill_grace=0,
                                 cmd=[sys.executable, str(ROOT / "examples" / "counter" / "plugin.py")]))
    caller: threading.Thread | None = None
    killer: threading.Thread | None = None
    try:
        client.start()
        counter = client.dispense(PLUGIN_NAME)
        pid = client.runner.pid
        folder = client._tmpdir
        assert pid is not None and folder is not None
        errors: list[BaseException] = []
        caller = _put_calling_back(counter, held, errors)
        assert held.entered.wait(10), "the plugin never called the host's callback"
        killer = _kill_aside(client, GUARD)
        assert not killer.is_alive(), "Client.kill() waited for the callback handler blocking its loop"
        assert not held.done.is_set()  # still blocked: kill() returned without it
        assert not os.path.exists(f"/proc/{pid}"), f"plugin process {pid} outlived Client.kill()"
        assert not os.path.exists(folder), "the socket folder outlived Client.kill()"
        caller.join(BOUND)
        assert not caller.is_alive() and isinstance(errors[0], PlugbayError), errors
        assert not (tmp_path / "kv_k").exists()  # the plugin's Put never got the callback's answer
    finally:
        held.release.set()  # its answer goes nowhere: nothing crashes
        client.kill()
        for thread in (killer, caller):
            if thread is not None:
                thread.join(BOUND)
    wait_for(lambda: not any(t.name == "plugbay-aio-handlers" for t in threading.enumerate()),
             "plugbay's asyncio handler loop to end once the callback returned", timeout=10)
    # the loop, stopped under the blocking coroutine, left no task pending for the garbage collector
    # to warn of (its own drain, never started, was "never awaited")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        gc.collect()
    assert not [w for w in said if "never awaited" in str(w.message)], [str(w.message) for w in said]
    assert "Task was destroyed but it is pending" not in caplog.text
