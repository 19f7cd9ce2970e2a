"""A process plugin's escaped descendants die with it; plugins of a SIGKILLed host are swept."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.resilience_util import wait_until

from plugbay.errors import ConfigError
from plugbay.runners.base import LaunchSpec  # noqa: I001
from plugbay.runners.process import ProcessRunner, sweep
from plugbay.runners.proctree import stat_of
from plugbay.runners.session import host_session_id

PY = sys.executable
REPO = Path(__file__).resolve().parent.parent
# The plugin starts a grandchild in its own session (out of reach of killpg) and prints its pid.
ESCAPER = ("import subprocess, sys, time\n"
           "p = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
           "print(p.pid, flush=True)\n"
           "time.sleep(60 if sys.argv[1] == 'stay' else 0)\n")


def _gone(pid: int) -> bool:
    return stat_of(pid) is None  # gone, or a zombie waiting for its (new) parent


def _escaper(mode: str) -> tuple[ProcessRunner, int]:
    runner = ProcessRunner([PY, "-c", ESCAPER, mode])
    runner.start(LaunchSpec(env={}))
    return runner, int(next(runner.stdout_lines()))


def test_a_grandchild_in_its_own_session_dies_with_the_plugin() -> None:
    runner, grandchild = _escaper("stay")
    try:
        assert os.getsid(grandchild) == grandchild != os.getsid(runner.pid or 0)
    finally:
        runner.kill(0.5)
    assert wait_until(lambda: _gone(grandchild), 5), "the grandchild outlived kill()"


def test_an_orphaned_grandchild_is_found_by_the_plugin_marker() -> None:
    runner, grandchild = _escaper("leave")
    try:
        assert runner.wait(10) == 0  # its parent is gone: only the marker ties it to the plugin
        assert not _gone(grandchild)
    finally:
        runner.kill(0.5)
    assert wait_until(lambda: _gone(grandchild), 5), "the orphan outlived kill()"


CRASHING_HOST = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    from plugbay.runners.base import LaunchSpec
    from plugbay.runners.session import HOST_SESSION_ID
    from plugbay.runners.process import ProcessRunner
    runner = ProcessRunner(["sleep", "60"])
    runner.start(LaunchSpec(env={}))
    print(json.dumps({"session": HOST_SESSION_ID, "pid": runner.pid}), flush=True)
    time.sleep(60)
""")


def test_sweep_ends_the_plugins_of_a_sigkilled_host_only() -> None:
    host = subprocess.Popen([PY, "-c", CRASHING_HOST, str(REPO / "src")], stdout=subprocess.PIPE, text=True)
    assert host.stdout is not None
    facts = json.loads(host.stdout.readline())
    host.stdout.close()
    host.send_signal(signal.SIGKILL)
    host.wait(10)
    orphan = facts["pid"]
    start = stat_of(orphan)
    mine = ProcessRunner(["sleep", "60"])
    mine.start(LaunchSpec(env={}))
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        assert start is not None, "the plugin did not outlive its host (nothing to sweep)"
        # (no sweep(live_sessions=...) here: every unlisted session counts as gone, other runs' too); of this
        # test's sessions only: a concurrent run's plugin between hosts (its host gone, the one reattaching to it
        # not yet its claimant) is not this test's to kill
        ours = [facts["session"], host_session_id()]
        removed = sweep(sessions=ours)
        assert orphan in removed and mine.pid not in removed and bystander.pid not in removed
        assert wait_until(lambda: _gone(orphan), 5)
        assert mine.wait(0) is None and bystander.poll() is None
        assert sweep(sessions=ours) == []
    finally:
        mine.kill(0)
        bystander.kill()
        bystander.wait(10)
        if start is not None and stat_of(orphan) == start:
            os.kill(orphan, signal.SIGKILL)


def _crashed_host() -> dict[str, Any]:
    """The session and plugin pid of a host SIGKILLed once its plugin started: the plugin lives on."""
    host = subprocess.Popen([PY, "-c", CRASHING_HOST, str(REPO / "src")], stdout=subprocess.PIPE, text=True)
    assert host.stdout is not None
    facts: dict[str, Any] = json.loads(host.stdout.readline())
    host.stdout.close()
    host.send_signal(signal.SIGKILL)
    host.wait(10)
    facts["start"] = stat_of(facts["pid"])
    return facts


def test_a_process_sweep_of_named_sessions_leaves_every_other_sessions_plugin() -> None:
    # before: the process runner's sweep() had no scope: a test's sweep killed any gone session's plugin of this
    # user, a concurrent run's among them while it waited for a reattach (its host gone, the reattaching one not
    # yet its claimant)
    first, second = _crashed_host(), _crashed_host()
    try:
        assert first["start"] is not None and second["start"] is not None, "a plugin did not outlive its host"
        assert sweep(sessions=[]) == []
        assert sweep(sessions=[first["session"]]) == [first["pid"]]
        assert wait_until(lambda: _gone(first["pid"]), 5)
        assert stat_of(second["pid"]) == second["start"]  # gone too, but not named
        with pytest.raises(ConfigError, match=r"not one str: pass \['x'\]"):
            sweep(sessions="x")  # its characters would have been the sessions
        with pytest.raises(ConfigError, match="non-empty str"):
            sweep(sessions=[""])
        assert stat_of(second["pid"]) == second["start"]
        assert sweep(sessions=[second["session"]]) == [second["pid"]]
        assert wait_until(lambda: _gone(second["pid"]), 5)
    finally:
        for facts in (first, second):
            if facts["start"] is not None and stat_of(facts["pid"]) == facts["start"]:
                os.kill(facts["pid"], signal.SIGKILL)


DAEMONIZING_HOST = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, sys.argv[1])
    from plugbay.runners.base import LaunchSpec
    from plugbay.runners.process import ProcessRunner
    from plugbay.runners import session
    parent = session.HOST_SESSION_ID  # the parent's identity is made before the fork
    if os.fork():
        os._exit(0)  # the classic daemon: the parent exits, the child carries on as the host
    runner = ProcessRunner(["sleep", "60"])
    runner.start(LaunchSpec(env={}))
    print(json.dumps({"parent": parent, "session": session.HOST_SESSION_ID, "host": os.getpid(),
                      "pid": runner.pid}), flush=True)
    time.sleep(60)
""")


def test_a_forked_host_is_its_own_session_and_its_plugins_survive_its_parent() -> None:
    launcher = subprocess.Popen([PY, "-c", DAEMONIZING_HOST, str(REPO / "src")], stdout=subprocess.PIPE, text=True)
    assert launcher.stdout is not None
    facts = json.loads(launcher.stdout.readline())
    launcher.stdout.close()
    assert launcher.wait(10) == 0
    daemon, plugin = facts["host"], facts["pid"]
    plugin_start = stat_of(plugin)
    try:
        assert facts["session"] != facts["parent"] and facts["session"].startswith(f"{daemon}-")
        # its parent is gone, the forked host is not: a sweep must leave the host's plugin alone
        ours = [facts["session"], facts["parent"]]  # the sweep judges these only: others' plugins are not ours
        assert plugin not in sweep(sessions=ours) and stat_of(plugin) == plugin_start
        os.kill(daemon, signal.SIGKILL)
        assert wait_until(lambda: _gone(daemon), 5)
        assert plugin in sweep(sessions=ours)  # now its host is gone
        assert wait_until(lambda: _gone(plugin), 5)
    finally:
        for pid, start in ((daemon, None), (plugin, plugin_start)):
            if stat_of(pid) is not None and (start is None or stat_of(pid) == start):
                os.kill(pid, signal.SIGKILL)


def _execed(pid: int, marker: str) -> bool:
    """The child has exec'd with its own environment (between fork and exec /proc shows the parent's)."""
    from plugbay.runners.proctree import environ

    return (environ(pid) or {}).get("PLUGBAY_PLUGIN_ID") == marker


def test_family_since_skips_marked_processes_older_than_the_plugin() -> None:
    """``since`` (the plugin's start ticks) bounds the scan: an older process is never its kin."""
    import time

    from plugbay.runners.proctree import family

    marker = "since-test-" + os.urandom(4).hex()
    env = {**os.environ, "PLUGBAY_PLUGIN_ID": marker}
    older = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env)
    try:
        assert wait_until(lambda: _execed(older.pid, marker), 5)
        time.sleep(0.05)  # start ticks are 10 ms apart
        newer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env)
        try:
            assert wait_until(lambda: _execed(newer.pid, marker), 5)
            older_facts, newer_facts = stat_of(older.pid), stat_of(newer.pid)
            assert older_facts is not None and newer_facts is not None
            assert older_facts[1] < newer_facts[1]
            assert set(family(None, marker)) >= {older.pid, newer.pid}
            found = family(None, marker, since=newer_facts[1])
            assert newer.pid in found and older.pid not in found
        finally:
            newer.kill()
            newer.wait()
    finally:
        older.kill()
        older.wait()


STRAY_WRITER = ("import os, sys, time\n"
                "if os.fork(): sys.exit(0)\n"  # reparented: no parent link to the plugin
                "os.setsid()\n"  # its own session and group: the kill's group signal misses it
                "print(os.getpid(), flush=True)\n"
                "for _ in range(600):\n print('stray', flush=True); time.sleep(0.05)\n")


def test_the_output_readers_end_after_kill_though_an_escaped_stray_writes_on() -> None:
    # a descendant without the plugin's marker in its environment is out of kill()'s reach; writing
    # more often than the readers' poll interval it kept stdout_lines() going for as long as it wrote
    plugin = ("import os, subprocess, sys, time\n"
              "subprocess.Popen([sys.executable, '-c', sys.argv[1]], env={'PATH': os.environ['PATH']}).wait()\n"
              "time.sleep(60)\n")
    runner = ProcessRunner([sys.executable, "-c", plugin, STRAY_WRITER])
    runner.start(LaunchSpec(env={}))
    lines = runner.stdout_lines()
    stray = int(next(lines))
    ended = threading.Event()
    reader = threading.Thread(target=lambda: (collections.deque(lines, maxlen=0), ended.set()), daemon=True)
    try:
        reader.start()
        time.sleep(0.3)
        runner.kill(0)
        assert ended.wait(10), "stdout_lines() did not end after kill()"
    finally:
        os.kill(stray, signal.SIGKILL)
        reader.join(10)
