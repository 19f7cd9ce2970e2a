"""Supervisor restarts against real plugin processes: the backoff of a crash loop grows, settings are
checked before a plugin runs, a start that fails after its plugin ran ends that plugin, and a call an
AsyncSupervisor's health restart ends fails typed as on the sync side."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.procs import gone
from tests.resilience_util import PLUGIN_NAME, PY, REPO, faulty_config, wait_until

from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402, I001

import plugbay.core.resilience.supervisor as supervisor_module  # noqa: E402
from plugbay import (AsyncSupervisor, ConfigError, PluginDiedError, RestartPolicy, RetryPolicy,  # noqa: E402
                     Supervisor, SupervisorEvent)
from plugbay.core.resilience.restart import FailureRun  # noqa: E402

CRASHING = str(REPO / "tests" / "plugins" / "crashing_kv.py")


def _supervisor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("plugbay-supervisor")]


# --- a crash loop backs off further each time ------------------------------------------------


def test_a_plugin_that_crashes_soon_after_each_start_waits_longer_before_each_restart(tmp_path: Path) -> None:
    events: list[SupervisorEvent] = []
    policy = RestartPolicy(max_restarts=3, window=600, initial_backoff=0.3, multiplier=2.0, max_backoff=10,
                           jitter=0.0)
    sup = Supervisor(lambda: faulty_config(tmp_path, cmd=[PY, CRASHING], env={"CRASH_AFTER": "0.5"}),
                     restart=policy, health_interval=None, on_event=events.append)
    with sup:
        assert wait_until(lambda: sup.state == "failed", 90)
    waits, failed_at = [], None
    for e in events:
        if e.kind == "failure":
            failed_at = e.at
        elif e.kind == "restarting" and failed_at is not None:
            waits.append(e.at - failed_at)
            failed_at = None
    assert len(waits) == 3, [e.kind for e in events]
    # each plugin ran 0.5 s, well under stable_after: the failures are one run, and the waits grow
    assert waits[1] >= 1.5 * waits[0] and waits[2] >= 1.5 * waits[1], waits


def test_the_failures_in_a_row_start_over_once_a_plugin_ran_for_stable_after() -> None:
    now = [0.0]
    run = FailureRun(clock=lambda: now[0])
    policy = RestartPolicy(initial_backoff=1.0, multiplier=2.0, max_backoff=100, jitter=0.0, stable_after=30)
    assert policy.stable_seconds() == 30
    assert RestartPolicy(max_backoff=3).stable_seconds() == 10.0  # the default: max_backoff, at least 10 s
    assert RestartPolicy(max_backoff=60).stable_seconds() == 60.0
    run.running()
    now[0] = 5.0
    run.failed(policy)
    assert run.next_backoff(policy) == 1.0
    assert run.next_backoff(policy) == 2.0  # the restart failed to start: one more in the run
    run.running()
    now[0] = 20.0  # up 15 s: still the same run
    run.failed(policy)
    assert run.next_backoff(policy) == 4.0
    run.running()
    now[0] = 60.0  # up 40 s: this failure begins a new run
    run.failed(policy)
    assert run.next_backoff(policy) == 1.0
    with pytest.raises(ConfigError, match="stable_after"):
        RestartPolicy(stable_after=-1)


# --- settings are checked before any plugin runs -----------------------------------------------

BAD_SECONDS = {"0": 0, "-1": -1, "nan": float("nan"), "inf": float("inf"), "10**400": 10 ** 400,
               "10**12": 10 ** 12, "'2'": "2", "True": True}


@pytest.mark.parametrize("owner", [Supervisor, AsyncSupervisor])
@pytest.mark.parametrize("bad", BAD_SECONDS.values(), ids=BAD_SECONDS.keys())
def test_bad_health_settings_are_refused_by_the_constructor(tmp_path: Path, owner: Any, bad: object) -> None:
    started: list[object] = []

    def source() -> Any:
        started.append(1)
        return faulty_config(tmp_path)

    with pytest.raises(ConfigError, match=r"invalid \w*Supervisor: health_interval \(or None\) (must be|is too large)"):
        owner(source, health_interval=bad)
    with pytest.raises(ConfigError, match=r"invalid \w*Supervisor: health_timeout (must be|is too large)"):
        owner(source, health_timeout=bad)
    assert not started


@pytest.mark.parametrize("owner", [Supervisor, AsyncSupervisor])
def test_other_settings_of_the_wrong_type_are_refused_typed(tmp_path: Path, owner: Any) -> None:
    with pytest.raises(ConfigError, match=r"unhealthy_grace must be a number \(got '4'\)"):
        owner(lambda: faulty_config(tmp_path), unhealthy_grace="4")
    with pytest.raises(ConfigError, match=r"on_event must be a function taking a SupervisorEvent, or None \(got int\)"):
        owner(lambda: faulty_config(tmp_path), on_event=42)
    owner(lambda: faulty_config(tmp_path), health_interval=None, health_timeout=0.5, unhealthy_grace=math.inf)


@pytest.mark.parametrize("owner", [Supervisor, AsyncSupervisor])
def test_health_settings_take_any_real_number_as_a_float(tmp_path: Path, owner: Any) -> None:
    """A Fraction or numpy scalar (taken before these checks) is kept as the float the watcher's waits take."""
    from fractions import Fraction

    import numpy as np

    made = owner(lambda: faulty_config(tmp_path), health_interval=np.float32(1), health_timeout=Fraction(1, 2),
                 unhealthy_grace=np.int64(4))
    sup = made._sup if owner is AsyncSupervisor else made
    assert (sup.health_interval, sup.health_timeout, sup.unhealthy_grace) == (1.0, 0.5, 4.0)
    assert {type(v) for v in (sup.health_interval, sup.health_timeout, sup.unhealthy_grace)} == {float}


def test_retry_policy_refuses_methods_none_and_reads_a_generator_once() -> None:
    with pytest.raises(ConfigError, match=r"methods must be a list of method names or patterns.*\(got None\)"):
        RetryPolicy(methods=None)  # type: ignore[arg-type]
    policy = RetryPolicy(methods=(m for m in ["Get"]))
    assert policy.is_idempotent("/proto.KV/Get") and policy.is_idempotent("/proto.KV/Get")


# --- a start that fails once its plugin runs ends that plugin ----------------------------------


class _BrokenWatcher:
    """Stands in for the HealthWatcher the first start makes: notes the plugin's pid, then fails."""

    pids: list[int] = []

    def __init__(self, channel: grpc.Channel, **kw: Any) -> None:
        stub = kv_pb2_grpc.KVStub(channel)
        self.pids.append(int(stub.Get(kv_pb2.GetRequest(key="__pid__"), timeout=10).value))

    def start(self) -> _BrokenWatcher:
        raise RuntimeError("no health watcher today")


def test_a_start_that_fails_after_the_plugin_ran_ends_it_and_may_be_tried_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = supervisor_module.HealthWatcher
    monkeypatch.setattr(supervisor_module, "HealthWatcher", _BrokenWatcher)
    _BrokenWatcher.pids = []
    sup = Supervisor(lambda: faulty_config(tmp_path), health_interval=0.5)
    try:
        with pytest.raises(RuntimeError, match="no health watcher today"):
            sup.start()
        [pid] = _BrokenWatcher.pids
        assert wait_until(lambda: gone(pid), 15), "the plugin of the failed start was left running"
        assert sup.state == "failed" and sup.current_client is None and not _supervisor_threads()
        assert "start failed: RuntimeError" in (sup.last_failure or "")
        monkeypatch.setattr(supervisor_module, "HealthWatcher", real)
        sup.start()  # begins from scratch: a new plugin, watched
        assert sup.state == "running" and len(_supervisor_threads()) == 1
        kv = sup.dispense(PLUGIN_NAME)
        second = int(kv.get("__pid__"))
        assert second != pid
        os.kill(second, signal.SIGKILL)
        # it restarts: a Supervisor again (a call sent before it noticed the death fails with that death)
        assert wait_until(lambda: sup.restarts == 1 and sup.state == "running", 30), sup.state
        assert int(kv.get("__pid__")) != second
    finally:
        sup.stop()
    assert not _supervisor_threads()


def test_an_async_start_that_fails_after_the_plugin_ran_ends_it_and_may_be_tried_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = supervisor_module.HealthWatcher
    monkeypatch.setattr(supervisor_module, "HealthWatcher", _BrokenWatcher)
    _BrokenWatcher.pids = []

    async def main() -> None:
        sup = AsyncSupervisor(lambda: faulty_config(tmp_path), health_interval=0.5)
        try:
            with pytest.raises(RuntimeError, match="no health watcher today"):
                await sup.start()
            [pid] = _BrokenWatcher.pids
            assert wait_until(lambda: gone(pid), 15), "the plugin of the failed start was left running"
            assert sup.state == "failed" and sup.current_client is None
            monkeypatch.setattr(supervisor_module, "HealthWatcher", real)
            await sup.start()
            kv = await sup.dispense(PLUGIN_NAME)
            assert int(await kv.get("__pid__")) != pid and sup.state == "running"
        finally:
            await sup.stop()

    asyncio.run(main())
    assert not _supervisor_threads()


# --- an AsyncSupervisor's health restart: the call in flight fails typed -------------------------

HEALTH = dict(health_interval=0.3, health_timeout=0.5, unhealthy_grace=0.5)
# CYCLE: a failed call's error holds, through its traceback, each frame it passed, and so what those hold:
# asyncio.wait_for's frame holds the task (whose result is the error), and so does the test's own while it
# keeps the task and the error. That cycle keeps the call's grpc.aio channel, and with it grpcio's
# process-wide poller thread and socket pair, until a full garbage collection, which may come only after
# the session's descriptor check.


@pytest.mark.parametrize("run", range(3))
def test_an_async_call_in_flight_during_a_health_restart_fails_as_the_plugins_death(tmp_path: Path, run: int) -> None:
    async def main() -> None:
        sup = AsyncSupervisor(lambda: faulty_config(tmp_path, call_timeout=30), restart=RestartPolicy(), **HEALTH)
        async with sup:
            kv = await sup.dispense(PLUGIN_NAME)
            await kv.put("a", b"1")
            await kv.put("__slow__", b"1")  # the next Get sleeps 10 s: in flight when the restart comes
            call = asyncio.ensure_future(kv.get("a"))
            await asyncio.sleep(0.3)
            await kv.put("__health__", b"NOT_SERVING")
            with pytest.raises(PluginDiedError, match="the AsyncSupervisor restarted plugin") as caught:
                async with asyncio.timeout(30):  # not wait_for: see CYCLE
                    await call
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert await sup.wait_running(30) and sup.sync_supervisor.restarts == 1
            del call, caught  # see CYCLE

    asyncio.run(main())


def test_an_async_idempotent_call_in_flight_during_a_health_restart_is_resent(tmp_path: Path) -> None:
    async def main() -> None:
        sup = AsyncSupervisor(lambda: faulty_config(tmp_path, call_timeout=30), restart=RestartPolicy(),
                              retry=RetryPolicy(methods=["Get"], initial_backoff=0.05), **HEALTH)
        async with sup:
            kv = await sup.dispense(PLUGIN_NAME)
            await kv.put("a", b"1")
            await kv.put("__slow__", b"1")
            call = asyncio.ensure_future(kv.get("a"))
            await asyncio.sleep(0.3)
            await kv.put("__health__", b"NOT_SERVING")
            # resent: the restarted plugin, whose store starts empty, answers it
            with pytest.raises(grpc.RpcError) as caught:
                async with asyncio.timeout(30):  # not wait_for: see CYCLE
                    await call
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND, repr(caught.value)
            del call, caught  # see CYCLE

    asyncio.run(main())
