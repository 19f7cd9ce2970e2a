"""A plugin that takes the connection and answers nothing (stopped, wedged, overloaded) is told apart from one that
is not there: `plugbay health` and `call` say what the deadline met, not only "Deadline Exceeded".

A SIGSTOPped plugin read "UNREACHABLE (DEADLINE_EXCEEDED: Deadline Exceeded)", the words of a plugin that is gone,
and sent the operator to the network; its process is what to look at.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from tests.cli_util import KV_PLUGIN, KV_PROTO, plugbay, running

SLOW_HEALTH = Path(__file__).resolve().parent / "plugins" / "slow_health_kv.py"


def test_a_stopped_plugin_is_said_to_have_taken_the_connection_and_said_nothing(tmp_path: Path) -> None:
    with running(["--cmd", f"{sys.executable} {KV_PLUGIN}", "--cookie", "BASIC_PLUGIN=hello", "--automtls"],
                 tmp_path) as run:
        pid = int(run.config()["runner"]["pid"])
        os.kill(pid, signal.SIGSTOP)
        try:
            health = plugbay("health", run.target, "--timeout", "2")
            call = plugbay("call", run.target, "/proto.KV/Get", '{"key": "a"}', "--proto", str(KV_PROTO),
                           "--timeout", "2")
        finally:
            os.kill(pid, signal.SIGCONT)
    assert health.returncode == 3, health.stdout + health.stderr
    assert health.stdout.startswith("UNREACHABLE "), health.stdout + health.stderr
    assert "the peer took it and said nothing (a plugin stopped, wedged or overloaded" in health.stdout
    assert call.returncode == 3, call.stderr
    assert "the peer took it and said nothing (a plugin stopped, wedged or overloaded" in call.stderr


def test_a_connected_plugin_that_does_not_answer_is_said_to_run(tmp_path: Path) -> None:
    with running(["--cmd", f"{sys.executable} {SLOW_HEALTH}", "--cookie", "BASIC_PLUGIN=hello", "--no-automtls"],
                 tmp_path) as run:
        (tmp_path / "slow").touch()  # from now on its health checks stall; it runs on (its cwd is tmp_path)
        health = plugbay("health", run.target, "--timeout", "2")
    assert health.returncode == 3, health.stdout + health.stderr
    assert "the connection is up but the plugin did not answer in time: it runs but is stopped, wedged or" \
           " overloaded" in health.stdout, health.stdout + health.stderr


def test_a_call_whose_method_outlasts_the_timeout_is_not_sent_to_look_for_a_stopped_plugin(tmp_path: Path) -> None:
    # a method slower than --timeout is the most common deadline on a connection that is up: `call` says so first,
    # and not "check that the plugin runs" right after saying it runs (found in review)
    from tests.resilience_util import FAULTY

    with running(["--cmd", f"{sys.executable} {FAULTY}", "--cookie", "BASIC_PLUGIN=hello", "--no-automtls"],
                 tmp_path) as run:
        call = plugbay("call", run.target, "/proto.KV/Get", '{"key": "__sleep__"}', "--proto", str(KV_PROTO),
                       "--timeout", "0.5")
    assert call.returncode == 3, call.stderr
    assert "the method takes longer than --timeout, or the plugin is stopped, wedged or overloaded" in call.stderr, \
        call.stderr
    assert "check that the plugin runs" not in call.stderr, call.stderr
