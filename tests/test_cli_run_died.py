"""`plugbay run`'s error for a plugin that dies while it runs shows the plugin's last stderr lines as the library's
own errors do: an hclog entry as "[LEVEL] message", not the JSON object the plugin wrote (an operator's trial:
the run's error quoted {"@level":"warn","@message":"dying now",...} where PluginDiedError said [WARNING] dying now)."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.cli_util import KV_PROTO, REPO, plugbay, running

PY_PLUGIN = REPO / "tests" / "plugins" / "resilience_kv.py"


def test_a_plugin_that_dies_while_running_is_told_with_its_log_lines_as_the_library_shows_them(
        tmp_path: Path) -> None:
    with running(["--cmd", f"{sys.executable} {PY_PLUGIN}", "--cookie", "BASIC_PLUGIN=hello"], tmp_path) as run:
        died = plugbay("call", run.target, "/proto.KV/Get", '{"key": "__die__"}', "--proto", str(KV_PROTO))
        assert died.returncode != 0, died.stdout
        run.stdout, run.stderr = run.proc.communicate(timeout=60)  # the run ends by itself, as its plugin did
    assert run.proc.returncode == 1, (run.stdout, run.stderr)
    shown = run.stdout + run.stderr
    assert "exited with code 9 while running" in shown, shown
    assert "[WARNING] dying now" in shown, shown
    assert '"@message"' not in shown and '"@level"' not in shown, shown
