"""A RestartPolicy subclass whose backoff() gives nan or a negative number restarted the plugin at once
with no error (only math.inf ended the restart loop, with an OverflowError): any backoff that is not a
number of seconds >= 0 of at most a year is the policy's bug, and the Supervisor gives up saying so.
Real plugins (the fault-switch KV plugin)."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pytest

from tests.resilience_util import faulty_config, wait_until

from plugbay import RestartBudgetExhaustedError, RestartPolicy, Supervisor


@pytest.mark.parametrize("bad", [math.nan, -5.0, math.inf])
def test_a_backoff_no_wait_takes_makes_the_supervisor_give_up_saying_why(tmp_path: Path, bad: float) -> None:
    class _Policy(RestartPolicy):
        def backoff(self, consecutive: int) -> float:
            return bad

    events: list[tuple[str, str]] = []
    with Supervisor(lambda: faulty_config(tmp_path), restart=_Policy(), health_interval=None,
                    on_event=lambda e: events.append((e.kind, e.detail))) as sup:
        client = sup.current_client
        assert client is not None
        os.kill(client.runner.pid, signal.SIGKILL)
        assert wait_until(lambda: sup.state == "failed", 30)  # not "running" again at once
        assert sup.restarts == 0 and [kind for kind, _ in events].count("restarting") == 0
        gave_up = [detail for kind, detail in events if kind == "gave_up"]
        assert len(gave_up) == 1 and r"ConfigError: _Policy.backoff(1) must be" in gave_up[0], gave_up
        with pytest.raises(RestartBudgetExhaustedError, match=r"_Policy.backoff\(1\) must be"):
            sup.wait_running(5)
