"""The reattach config a host saves must follow its Supervisor's restarts (docs/resilience.md, "Reattach first").

A config saved once names the first plugin; after a restart it is stale, and a host that dies then leaves
the restarted plugin running with nothing naming it. Saving sup.reattach_config() once start() returned
and again at each ``restarted`` event (from on_event, on the Supervisor's own thread) keeps it current.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.procs import gone
from tests.resilience_util import PLUGIN_NAME, faulty_config, wait_until

from plugbay import ReattachConfig, RestartPolicy, Supervisor
from plugbay.core.resilience.restart import SupervisorEvent

FAST = RestartPolicy(max_restarts=3, window=120, initial_backoff=0.05, max_backoff=0.2)


def test_a_config_saved_at_each_restarted_event_names_the_running_plugin(tmp_path: Path) -> None:
    saved: list[str] = []

    def on_event(event: SupervisorEvent) -> None:
        if event.kind == "restarted":  # at started/reattached it is not running yet: start() returns then
            saved.append(sup.reattach_config().to_json())

    sup = Supervisor(lambda: faulty_config(tmp_path), restart=FAST, health_interval=None, on_event=on_event)
    with sup:
        saved.append(sup.reattach_config().to_json())
        kv = sup.dispense(PLUGIN_NAME)
        first = int(kv.get("__pid__"))
        assert len(saved) == 1 and ReattachConfig.from_json(saved[-1]).runner["pid"] == first
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: gone(first), 10)
        assert sup.wait_running(30) and wait_until(lambda: len(saved) == 2, 10)
        second = int(kv.get("__pid__"))
        assert second != first
        assert ReattachConfig.from_json(saved[-1]).runner["pid"] == second  # the restarted plugin, not the first
