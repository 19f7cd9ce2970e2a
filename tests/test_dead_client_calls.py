"""No call on a dead or closed Client reaches grpcio (a crash there kills the host process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "plugins" / "dead_calls.py"
KINDS = ("unary", "with_call", "future", "unary_stream", "stream_unary", "stream_stream",
         "stream_unary_future")


@pytest.mark.parametrize("mode", ["client", "supervisor"])
def test_every_call_kind_on_a_killed_plugin_fails_typed_without_crashing(
        mode: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    proc = subprocess.run([sys.executable, str(SCRIPT), "4", mode], capture_output=True, text=True,
                          timeout=180, env=env, cwd=tmp_path)
    assert proc.returncode == 0, (f"host process ended with {proc.returncode}"
                                  f" (-11 is SIGSEGV)\n{proc.stdout}\n{proc.stderr[-3000:]}")
    lines = proc.stdout.splitlines()
    assert lines[-1] == "ok"
    for kind in KINDS:
        mine = [line for line in lines if line.startswith(kind + ":")]
        assert len(mine) == (8 if mode == "client" else 4), (kind, lines)  # client: also after kill()
    # a Supervisor's caller is told what it does about the death (RestartPolicy(max_restarts=0): nothing),
    # not to start a new Client
    died_advice = "start a new Client" if mode == "client" else "its Supervisor does not restart it"
    for line in lines[:-1]:
        # PluginDiedError names the plugin and its exit; ClientStateError says to start anew
        assert ("PluginDiedError" in line and "killed by SIGKILL" in line and died_advice in line) \
            or ("ClientStateError" in line and "start a new Client" in line) \
            or ("RestartBudgetExhaustedError" in line), line
        # every call failure is also a grpc.RpcError: UNAVAILABLE for a dead plugin, CANCELLED after kill()
        if "PluginDiedError" in line:
            assert ": rpc=UNAVAILABLE:" in line, line
        elif "ClientStateError" in line:
            assert ": rpc=CANCELLED:" in line or ": rpc=UNAVAILABLE:" in line, line
