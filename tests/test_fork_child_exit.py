"""A host that forks while its Client runs a plugin: the child's exit and its kill() leave the parent's plugin alone.

The forked child inherits the Client (and the registry the exit cleanup kills from): its
sys.exit() killed the parent's plugin (SIGKILL to its group, its socket folder removed) and
then waited out the readers of a loop thread the fork had not copied. Each host runs in a
process of its own (tests/procs-style): the child must run its interpreter's real exit.

grpcio itself crashes some children forked while gRPC streams are open (SIGSEGV, SIGABRT), whatever
the child does: the host forks again then (tests/forking.py). The forks grpcio crashed are in the facts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests import gobuild
from tests.procs import live_with_env

REPO = Path(__file__).resolve().parent.parent
KV_EXAMPLE = str(REPO / "examples" / "kv" / "plugin.py")

_HOST = r"""
import atexit, json, os, sys, threading
WAITS, REPORT = [], []


def report():  # registered before plugbay's exit cleanup: runs after it (atexit runs last-in first)
    if REPORT:
        sys.setprofile(None)
        os.write(REPORT[0], json.dumps(WAITS).encode())


atexit.register(report)
sys.path[:0] = [{repo!r}, {src!r}, {example!r}]
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
from plugbay import Client, ClientConfig
from tests.forking import fork_child

way, cmd = sys.argv[1], json.loads(sys.argv[2])
PLUGBAY = os.path.dirname(sys.modules["plugbay"].__file__)


def watch(frame, event, arg):  # plugbay code waiting on a thread, an event or a condition
    back = frame.f_back
    if (event == "call" and frame.f_code.co_name in ("wait", "wait_for", "join") and back is not None
            and back.f_code.co_filename.startswith(PLUGBAY)):
        WAITS.append(f"{{back.f_code.co_name}} -> {{frame.f_code.co_name}}")


def fork_and_check(client, kv):
    def child(write, attempt):
        REPORT[:] = [write]
        sys.setprofile(watch)
        if way in ("kill", "kill-exit"):
            client.kill()
            client.close()
            client.runner.kill(0)
        if way == "kill":
            report()
            os._exit(0)
        sys.exit(0)  # "exit", "kill-exit" and "with" (the with block's exit kills first)

    forked = fork_child(child)  # the child starts nothing: nothing to end after a crash
    kv.put("after", b"fork")
    print(json.dumps(dict(status=forked.status, crashed=forked.crashed, waits=json.loads(forked.output or "null"),
                          answer=kv.get("after").decode(), exited=client.exited,
                          socket=os.path.exists(client.handshake.address))), flush=True)


config = ClientConfig(handshake=HANDSHAKE, plugins={{PLUGIN_NAME: KVPlugin()}}, cmd=cmd)
if way == "with":
    with Client(config) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("before", b"fork")
        fork_and_check(client, kv)
else:
    client = Client(config)
    client.start()
    kv = client.dispense(PLUGIN_NAME)
    kv.put("before", b"fork")
    fork_and_check(client, kv)
    client.kill()
"""


def _marked(mark: str) -> list[int]:
    return live_with_env("FORK_TEST", mark)


@pytest.mark.parametrize("kind", ["go", "python"])
@pytest.mark.parametrize("way", ["exit", "kill", "kill-exit", "with"])
def test_the_forked_child_leaves_the_parents_plugin_running(tmp_path: Path, kind: str, way: str) -> None:
    cmd = [str(gobuild.build_go("kv_plugin"))] if kind == "go" else [sys.executable, KV_EXAMPLE]
    script = _HOST.format(repo=str(REPO), src=str(REPO / "src"), example=str(REPO / "examples" / "kv"))
    mark = uuid.uuid4().hex  # in the environment of the host, its forked child and the plugin
    host = subprocess.Popen([sys.executable, "-c", script, way, json.dumps(cmd)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path, env={**os.environ, "FORK_TEST": mark})
    try:
        out, err = host.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # a hung host (or its child): ended with its plugin
        host.kill()
        for pid in _marked(mark):
            os.kill(pid, signal.SIGKILL)
        host.communicate()
        raise
    left = _marked(mark)  # the parent killed its plugin as it ended; the child is reaped
    for pid in left:  # pragma: no cover - only when the next assertion fails
        os.kill(pid, signal.SIGKILL)
    assert host.returncode == 0, err[-3000:]
    assert left == [], "the host's own kill() left its plugin running"
    facts = json.loads(out.splitlines()[-1])
    # the parent's plugin answered after the child's exit, its socket still in its folder
    assert facts["answer"] == "fork" and facts["exited"] is False and facts["socket"] is True, facts
    # the child ended by itself, and nothing of plugbay's waited there (its exit and kill() waited
    # 5 s for each reader of a loop thread the fork had not copied)
    assert facts["status"] is not None, f"grpcio crashed every fork: {facts}"
    assert facts["status"] == 0, facts
    assert facts["waits"] == [], facts
