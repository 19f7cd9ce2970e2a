"""A reattached kill signals the process it proved, never one that got the pid between proof and signal.

The proof (start ticks, PLUGBAY_PLUGIN_ID in /proc/PID/environ) and the signal are apart by the
walk of /proc for the plugin's kin (tens of ms with a thousand processes). The test ends the plugin
in that walk and starts a bystander at the same pid (ns_last_pid picks the next pid), as a busy
machine cycling through its pids would.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from plugbay.runners import attached as attached_mod
from plugbay.runners.attached import _start_time
from plugbay.runners.base import reattach_runner
from plugbay.runners.proctree import ENV_PLUGIN_ID

NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"


def _spawn_at(pid: int, cmd: list[str], **kw: Any) -> subprocess.Popen[bytes] | None:
    """``cmd`` started as process ``pid`` (other processes may take it first: tried again), or None."""
    for _ in range(50):
        try:
            with open(NS_LAST_PID, "w") as f:
                f.write(str(pid - 1))
        except OSError as exc:
            pytest.skip(f"cannot choose the next pid here ({NS_LAST_PID}: {exc})")
        proc = subprocess.Popen(cmd, **kw)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait(10)
    return None


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.mark.parametrize("leads_group", [True, False], ids=["group-leader", "in-the-hosts-group"])
def test_a_pid_reused_between_proof_and_signal_is_left_alone(leads_group: bool, procs: list[Any],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    plugin_id = secrets.token_hex(16)
    plugin = subprocess.Popen(["sleep", "60"], env={**os.environ, ENV_PLUGIN_ID: plugin_id},
                              start_new_session=leads_group)
    procs.append(plugin)
    time.sleep(0.05)  # the bystander starts clock ticks later, as one that reuses a plugin's pid does
    attached = reattach_runner({"kind": "ProcessRunner", "pid": plugin.pid, "start_time": _start_time(plugin.pid),
                                "plugin_id": plugin_id})
    family = attached_mod.family

    def plugin_gone_and_pid_reused(root: int | None, *args: Any) -> dict[int, int]:
        if root == plugin.pid and not procs[1:]:
            plugin.kill()
            plugin.wait(10)  # reaped: its pid is free
            # a bystander that leads a group of its own, as a daemon does: both a group and a
            # process signal by that number reach it
            bystander = _spawn_at(plugin.pid, ["sleep", "60"], start_new_session=True)
            if bystander is None:
                pytest.skip("other processes kept taking the pid")
            procs.append(bystander)
        return family(root, *args)

    monkeypatch.setattr(attached_mod, "family", plugin_gone_and_pid_reused)
    attached.kill(0.5)
    assert len(procs) == 2, "the kill never walked the plugin's kin"
    time.sleep(0.2)
    assert procs[1].poll() is None, f"the process that got the plugin's pid was signalled ({procs[1].poll()})"


def test_a_helper_whose_pid_is_reused_after_its_check_is_left_alone(procs: list[Any],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """signal_all checks each process's start ticks, then signals it (the plugin's helpers, at kill)."""
    from plugbay.runners import proctree

    helper = subprocess.Popen(["sleep", "60"])
    procs.append(helper)
    stat_of = proctree.stat_of

    def checked_then_reused(pid: int) -> Any:
        facts = stat_of(pid)
        if pid == helper.pid and not procs[1:]:
            helper.kill()
            helper.wait(10)
            bystander = _spawn_at(pid, ["sleep", "60"])
            if bystander is None:
                pytest.skip("other processes kept taking the pid")
            procs.append(bystander)
        return facts

    monkeypatch.setattr(proctree, "stat_of", checked_then_reused)
    facts = stat_of(helper.pid)
    assert facts is not None
    proctree.signal_all({helper.pid: facts[1]}, signal.SIGTERM)
    assert len(procs) == 2
    time.sleep(0.2)
    assert procs[1].poll() is None, f"the process that got the helper's pid was signalled ({procs[1].poll()})"
