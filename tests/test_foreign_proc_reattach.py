"""Reattaching by pid through a /proc of another pid namespace is refused, with what to do.

A host in a pid namespace of its own without a /proc of its own (``unshare --pid --fork`` without
--mount-proc, ``nsenter -p``) reads the outer namespace's processes there. Reattach data written by a
host outside names the plugin by its outer pid: /proc proves that process (its start time, its
PLUGBAY_PLUGIN_ID), but the same number signalled from inside names another process of the inner
namespace, or none. Here the plugin is go-plugin 1.0.1's real kv_plugin (a unix socket) or the
Python KV example listening on TCP, started outside, and the inner namespace gives the plugin's
number to an unrelated group leader (ns_last_pid) before it reattaches and kills. Through TCP (no
peer pid to check, unlike a unix socket's) the reattach used to be taken, so a kill of a plugin
that outlives its Shutdown call would SIGTERM that leader; through a unix socket it failed later,
blaming the address the plugin does listen on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests import gobuild
from tests.cli_util import cli_env
from tests.test_foreign_proc import SRC, _unshare

_reason = gobuild.go_missing_reason()
pytestmark = [pytest.mark.go, pytest.mark.skipif(_reason is not None, reason=_reason or "")]

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import Client, ClientConfig  # noqa: E402

# Pid 1 of a new pid namespace, with the outer /proc: the next process here gets the plugin's outer
# pid and leads its own group; then reattach (and, if that is taken, kill). Prints what happened.
_REATTACH = r"""
import json, os, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
from plugbay import Client, ClientConfig, ReattachConfig

data, pid = sys.argv[3], int(sys.argv[4])
victim = None
try:
    try:
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:  # this (inner) namespace's counter
            f.write(str(pid - 1))
    except OSError as exc:
        print(json.dumps({"skip": f"ns_last_pid cannot be set here: {exc}"}), flush=True)
        sys.exit(0)
    victim = subprocess.Popen(["sleep", "30"], process_group=0)
    if victim.pid != pid:
        print(json.dumps({"skip": "the plugin's number was not given to the next process"}), flush=True)
        sys.exit(0)
    out = {"foreign": os.readlink("/proc/self") != str(os.getpid())}
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                                 reattach=ReattachConfig.from_json(data)))
    try:
        client.start()
    except Exception as exc:
        out.update(error=type(exc).__name__, message=str(exc))
    else:
        out["error"] = None
        client.kill()
        time.sleep(0.3)
    out["victim"] = victim.poll()
    print(json.dumps(out), flush=True)
finally:
    if victim is not None and victim.poll() is None:
        victim.kill()
        victim.wait(10)
"""


@pytest.mark.parametrize("plugin", ["go-unix", "python-tcp"])
def test_reattach_through_a_foreign_proc_is_refused_and_signals_nothing(in_tmp: Path, plugin: str) -> None:
    unshare = _unshare()
    if plugin == "go-unix":
        cmd, env = [str(gobuild.build_go("kv_plugin"))], {}
    else:
        cmd, env = [sys.executable, str(REPO / "examples" / "kv" / "plugin.py")], {"PLUGBAY_LISTEN": "tcp"}
    first = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=cmd, env=env))
    try:
        first.start()
        first.dispense(PLUGIN_NAME).put("k", b"v")
        done = subprocess.run([*unshare, sys.executable, "-c", _REATTACH, str(SRC), str(REPO / "examples" / "kv"),
                               first.reattach_config().to_json(), first.runner.id],
                              capture_output=True, text=True, timeout=60, env=cli_env(), start_new_session=True)
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout.splitlines()[-1])
        if "skip" in out:
            pytest.skip(out["skip"])
        assert out["foreign"]
        assert out["victim"] is None, f"the reattached kill reached a process plugbay never started: {out}"
        assert out["error"] == "ReattachError", out
        assert "pid namespace" in out["message"] and "--mount-proc" in out["message"], out["message"]
        assert first.dispense(PLUGIN_NAME).get("k") == b"v"  # the plugin was left alone
    finally:
        first.kill()
