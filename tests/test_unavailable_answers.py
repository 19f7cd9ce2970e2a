"""An UNAVAILABLE is judged within the call's deadline: a live plugin's own answer at once, a broken connection
by a wait for the plugin's exit to show that ends with what is left of the call's deadline.

Each UNAVAILABLE from a live plugin used to wait the runner's whole exit-notice time (3 s for Docker) for an exit
that never came, past the call's deadline: a call failed late, and a RetryPolicy's overall deadline was spent on
the first try's judging, so it made one try of three. A plugin that answers a health check after the failure is
alive, whatever made the status; one whose connection broke gets the wait, no longer than its call may take.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests import gobuild
from tests.resilience_util import FAULTY, HANDSHAKE, PLUGIN_NAME, PLUGINS, PY
from tests.test_async_broken_calls import Hanging, only_child

from kvproto import kv_pb2  # noqa: E402  (on the path through resilience_util)

from plugbay import (AsyncClient, Client, ClientConfig, PluginDiedError, PluginUnavailableError,  # noqa: E402
                     ProcessRunner, RetryPolicy, install)

NOTICE = 10.0  # the runner's time to learn of an exit: far longer than the calls' deadlines below
DEADLINE = 4.0
GUARD = 60.0


class WaitRecordingRunner(ProcessRunner):
    """A ProcessRunner that learns of exits late (as an engine does) and records its bounded waits (the exit
    probe's; kill's grace is one too, which the tests do not read)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._lock = threading.Lock()
        self.waits: list[float] = []

    @property
    def exit_notice_time(self) -> float:
        return NOTICE

    def wait(self, timeout: float | None = None) -> int | None:
        if timeout:
            with self._lock:
                self.waits.append(timeout)
        return super().wait(timeout)


def _faulty(tmp_path: Path) -> tuple[WaitRecordingRunner, ClientConfig]:
    runner = WaitRecordingRunner([PY, FAULTY], cwd=tmp_path)
    return runner, ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, runner=runner, call_timeout=GUARD,
                                start_timeout=30.0)


def _answered(error: BaseException) -> None:
    assert isinstance(error, PluginUnavailableError) and not isinstance(error, PluginDiedError), error
    assert "answered UNAVAILABLE (injected failure)" in str(error), error


def test_a_live_plugins_unavailable_is_its_answer_and_retries_get_every_try(tmp_path: Path) -> None:
    runner, config = _faulty(tmp_path)
    with Client(config) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        kv.put("__fail__", b"1")
        before = len(runner.waits)
        with pytest.raises(PluginUnavailableError) as caught:
            kv._stub.Get(kv_pb2.GetRequest(key="k"), timeout=DEADLINE)
        _answered(caught.value)
        assert runner.waits[before:] == []  # no wait for the exit of a plugin that answers

        install(client, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01, methods=["Get"]))
        kv.put("__fail__", b"3")
        calls = int(kv.get("__calls__"))
        with pytest.raises(PluginUnavailableError) as caught:
            kv._stub.Get(kv_pb2.GetRequest(key="k"), timeout=DEADLINE)
        _answered(caught.value)
        assert int(kv.get("__calls__")) - calls == 3  # every try was made within the call's deadline


def test_an_async_clients_call_is_judged_the_same(tmp_path: Path) -> None:
    runner, config = _faulty(tmp_path)

    async def main() -> None:
        async with AsyncClient(config) as client:
            kv = await client.dispense(PLUGIN_NAME)
            await kv.put("k", b"v")
            await kv.put("__fail__", b"1")
            before = len(runner.waits)
            with pytest.raises(PluginUnavailableError) as caught:
                await kv._stub.Get(kv_pb2.GetRequest(key="k"), timeout=DEADLINE)
            _answered(caught.value)
            assert runner.waits[before:] == []

            install(client, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01, methods=["Get"]))
            await kv.put("__fail__", b"3")
            calls = int(await kv.get("__calls__"))
            with pytest.raises(PluginUnavailableError) as caught:
                await kv._stub.Get(kv_pb2.GetRequest(key="k"), timeout=DEADLINE)
            _answered(caught.value)
            assert int(await kv.get("__calls__")) - calls == 3

    asyncio.run(main())


def _outliving() -> WaitRecordingRunner:
    """The Go plugin under a shell that outlives it: killing the plugin breaks the connection while the launched
    process runs on, so a broken call's judging waits for an exit that never shows."""
    misbehave = gobuild.go_program_or_skip("misbehave")
    return WaitRecordingRunner(["sh", "-c", f"{misbehave}; sleep 60"],
                               env={"MISBEHAVE_MODE": "kv", "MISBEHAVE_MAX_SECONDS": "60"})


def _wait_for(hanging: Hanging, calls: int) -> None:
    """Until ``calls`` calls reached the plugin (bounded)."""
    for _ in range(int(GUARD / 0.02)):
        if hanging.calls >= calls:
            break
        time.sleep(0.02)
    assert hanging.calls == calls


def _broken(error: BaseException) -> bool:
    return isinstance(error, PluginUnavailableError) and not isinstance(error, PluginDiedError) \
        and "may not have received the call" in str(error)


@pytest.fixture
def hanging() -> Any:
    handler = Hanging()
    logger = logging.getLogger("plugbay.plugin")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def test_a_broken_calls_wait_for_the_exit_ends_with_its_deadline(hanging: Hanging) -> None:
    runner = _outliving()
    config = ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, runner=runner, call_timeout=GUARD)
    with Client(config) as client, ThreadPoolExecutor(1) as pool:
        stub = client.dispense(PLUGIN_NAME)._stub
        stub.Get(kv_pb2.GetRequest(key="__env__"))
        call = pool.submit(stub.Get, kv_pb2.GetRequest(key="__hang__"), timeout=DEADLINE)
        _wait_for(hanging, 1)
        before = len(runner.waits)
        assert runner.pid is not None
        os.kill(only_child(runner.pid), 9)
        error = call.exception(GUARD)
        waits = runner.waits[before:]
        assert error is not None and _broken(error), error
        assert waits and all(w <= DEADLINE for w in waits), waits  # not the runner's NOTICE


@contextlib.asynccontextmanager
async def _async_client(runner: WaitRecordingRunner) -> AsyncIterator[tuple[AsyncClient, Any]]:
    """An AsyncClient of the plugin ``runner`` starts, and its KV stub, after one answered call."""
    config = ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, runner=runner, call_timeout=GUARD)
    async with AsyncClient(config) as client:
        stub = (await client.dispense(PLUGIN_NAME))._stub
        await stub.Get(kv_pb2.GetRequest(key="__env__"))
        yield client, stub


def test_an_async_broken_calls_wait_for_the_exit_ends_with_its_deadline(hanging: Hanging) -> None:
    runner = _outliving()

    async def main() -> None:
        async with _async_client(runner) as (client, stub):
            calls = [stub.Get(kv_pb2.GetRequest(key="__hang__"), timeout=DEADLINE) for _ in range(4)]
            await asyncio.to_thread(_wait_for, hanging, 4)
            before = len(runner.waits)
            assert runner.pid is not None
            os.kill(only_child(runner.pid), 9)
            errors = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), GUARD)
            waits = runner.waits[before:]
            assert all(_broken(e) for e in errors), errors
            assert waits and all(w <= DEADLINE for w in waits), waits

    asyncio.run(main())


def test_an_async_call_sharing_a_longer_calls_exit_check_stops_at_its_own_deadline(hanging: Hanging) -> None:
    """Two calls broken together share one exit check; the one begun for the call with the longer deadline
    runs as long as that call may wait (up to the runner's NOTICE). The shorter call's share ends at its own
    deadline: it has failed while the longer call still waits (it waited the whole shared check before)."""
    runner = _outliving()

    async def main() -> None:
        async with _async_client(runner) as (client, stub):
            long = asyncio.ensure_future(stub.Get(kv_pb2.GetRequest(key="__hang__"), timeout=GUARD))
            await asyncio.to_thread(_wait_for, hanging, 1)
            short = asyncio.ensure_future(stub.Get(kv_pb2.GetRequest(key="__hang__"), timeout=DEADLINE))
            await asyncio.to_thread(_wait_for, hanging, 2)
            assert runner.pid is not None
            os.kill(only_child(runner.pid), 9)
            done, _ = await asyncio.wait([short], timeout=GUARD)
            assert done and _broken(short.exception() or Exception("no error")), short
            held = client.channel._judging._held  # the shared exit check, begun for the longer call
            assert held is not None and not held.future.done()  # it still runs (NOTICE > DEADLINE)
            assert not long.done()
            error = await asyncio.wait_for(asyncio.gather(long, return_exceptions=True), GUARD)
            assert _broken(error[0]), error

    asyncio.run(main())
