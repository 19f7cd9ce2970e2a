"""Judging a host gone through a /proc of another pid namespace: nothing is, nothing is signalled.

A process started with ``unshare --pid --fork`` (or entered with ``nsenter -p``) without a /proc of its
own sees the outer namespace's processes there: a pid of its own namespace names another process
there, or none. Such a sweeper must not take a live host for a gone one (its containers, pods and
plugins stay), and a host there must still label itself with its own start ticks. The sweeper here is
a real process in a pid namespace of its own (unshare), with a live "host" child whose pid has no
entry in the /proc it sees.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli_util import cli_env

SRC = Path(__file__).resolve().parent.parent / "src"

# Run as pid 1 of a new pid namespace with the outer /proc. Forks children (bounded in count and time)
# until one's pid has no /proc entry there; that child labels itself as a host session would (its
# session id and start ticks) and its start ticks as /proc/self shows them. Prints what the judges say.
_SWEEPER = r"""
import json, os, select, signal, socket, sys, time
sys.path.insert(0, sys.argv[1])
from plugbay.runners import proctree, session

def fork_host():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            with open("/proc/self/stat", "rb") as f:
                ticks = f.read().rsplit(b")", 1)[1].split()[19].decode()
            os.write(w, json.dumps([session.host_session_id(), session.host_session_start(), ticks]).encode())
            os.close(w)
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(w)
    return pid, r

host, facts = None, None
deadline = time.monotonic() + 20
try:
    for _ in range(400):
        if time.monotonic() > deadline:
            break
        pid, r = fork_host()
        if not os.path.exists(f"/proc/{pid}") and select.select([r], [], [], 10)[0]:
            host, facts = pid, json.loads(os.read(r, 4096))
            os.close(r)
            break
        os.close(r)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    if host is None:
        print(json.dumps({"skip": "no pid of this namespace was free in the outer /proc"}), flush=True)
        sys.exit(0)
    sid, start, true_start = facts
    here, pids = socket.gethostname(), session.host_pids()
    out = {"foreign": os.readlink("/proc/self") != str(os.getpid()), "start": start, "true_start": true_start,
           "gone": session.session_gone(here, pids, sid, start),
           "gone_true_start": session.session_gone(here, pids, sid, true_start),
           "running": session.session_running(here, pids, sid, true_start),
           "may_run": getattr(session, "session_may_run", lambda *a: None)(here, pids, sid, true_start),
           "proc_gone": proctree._gone(f"{sid}.{true_start}", None),
           "family": sorted(proctree.family(None, os.environ["PLUGBAY_PLUGIN_ID"])), "host": host}
    if len(sys.argv) > 2:  # a Kubernetes API: a pod of this host identity, labelled by that host
        from kubernetes import client, config
        from plugbay.runners.kubernetes.sweep import sweep
        api_client = config.new_client_from_config(sys.argv[2])
        try:
            labels = {"plugbay.managed": "true", "plugbay.session": sid, "plugbay.session-start": true_start,
                      "plugbay.host-pids": pids, "plugbay.host-id": "host-a"}
            client.CoreV1Api(api_client).create_namespaced_pod("default", {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "plugbay-kv-0123456789ab", "labels": labels,
                             "annotations": {"plugbay.host": here}},
                "spec": {"containers": [{"name": "plugin", "image": "x/y:1",
                                         "command": [sys.executable, "-c", "import time; time.sleep(60)"]}]}})
            out["kube_identity"] = sweep("default", api_client=api_client, host_id="host-a", dry_run=True,
                                         api_timeout=10)
            out["kube"] = sweep("default", api_client=api_client, dry_run=True, api_timeout=10)
        finally:
            api_client.close()
    out["alive"] = os.waitpid(host, os.WNOHANG) == (0, 0)
    print(json.dumps(out), flush=True)
finally:
    if host is not None:
        os.kill(host, signal.SIGKILL)
        os.waitpid(host, 0)
"""


def _unshare() -> list[str]:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare(1) and root to start a process in a pid namespace of its own")
    probe = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"this kernel refuses a new pid namespace: {probe.stderr.decode(errors='replace').strip()}")
    return ["unshare", "--pid", "--fork", "--kill-child"]  # no --mount-proc: the outer /proc


def _judged(*args: str) -> dict[str, Any]:
    plugin_id = secrets.token_hex(16)  # inherited by the sweeper and its host: what family() looks for
    done = subprocess.run([*_unshare(), sys.executable, "-c", _SWEEPER, str(SRC), *args], capture_output=True,
                          text=True, timeout=90, env=cli_env(PLUGBAY_PLUGIN_ID=plugin_id), start_new_session=True)
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    if "skip" in out:
        pytest.skip(out["skip"])
    assert out["foreign"] and out["alive"]
    return out


def test_a_live_host_is_not_judged_gone_through_a_foreign_proc() -> None:
    out = _judged()
    assert out["start"] == out["true_start"]  # its own start ticks, not those of what its pid names there
    assert not out["gone"] and not out["gone_true_start"]  # its containers and pods stay
    assert not out["running"] and out["may_run"]  # not proven to run, but it may
    assert not out["proc_gone"]  # its plugin processes stay
    # family() listed the outer numbers of the sweeper and its host: signalled here, they name others
    assert set(out["family"]) <= {out["host"]}


# Run as pid 1 of a new pid namespace with the outer /proc. A ProcessRunner plugin exits by itself and
# is reaped; its pid is then given (ns_last_pid) to an unrelated group leader of this namespace, under a
# number the outer /proc names no process by. Prints whether the plugin's kill() reached that process.
_REUSED_PID = r"""
import json, os, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from plugbay.runners.base import LaunchSpec
from plugbay.runners.process import ProcessRunner

def next_pid_is(n):
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:  # this (inner) namespace's counter
        f.write(str(n - 1))

victim = None
try:
    free = next(n for n in range(20000, 30000) if not os.path.exists(f"/proc/{n}"))
    try:
        next_pid_is(free)
    except OSError as exc:
        print(json.dumps({"skip": f"ns_last_pid cannot be set here: {exc}"}), flush=True)
        sys.exit(0)
    runner = ProcessRunner(["/bin/sh", "-c", "exit 0"])
    runner.start(LaunchSpec(env={}))
    assert runner.wait(10) == 0  # reaped, as the exit watcher reaps it
    next_pid_is(runner.pid)
    victim = subprocess.Popen(["sleep", "30"], process_group=0)
    if victim.pid != runner.pid or os.path.exists(f"/proc/{victim.pid}"):
        print(json.dumps({"skip": "the plugin's pid was not given to the next process"}), flush=True)
        sys.exit(0)
    runner.kill(0)
    time.sleep(0.3)
    print(json.dumps({"foreign": os.readlink("/proc/self") != str(os.getpid()), "victim": victim.poll()}),
          flush=True)
finally:
    if victim is not None and victim.poll() is None:
        victim.kill()
        victim.wait(10)
"""


def test_a_reaped_plugins_kill_leaves_the_group_its_pid_leads_now_through_a_foreign_proc() -> None:
    # the outer /proc names no process by the plugin's pid: read as "gone", its group was SIGKILLed
    done = subprocess.run([*_unshare(), sys.executable, "-c", _REUSED_PID, str(SRC)], capture_output=True,
                          text=True, timeout=60, env=cli_env(), start_new_session=True)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    if "skip" in out:
        pytest.skip(out["skip"])
    assert out == {"foreign": True, "victim": None}, "the kill reached a process plugbay never started"


@pytest.fixture
def standin() -> Iterator[Any]:
    pytest.importorskip("kubernetes")
    from tests.kube_standin.server import StandIn

    server = StandIn(runtime="process").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.kubernetes
@pytest.mark.timeout(120)
def test_the_kubernetes_sweep_leaves_a_pod_of_its_identity_whose_session_it_cannot_see(standin: Any,
                                                                                     tmp_path: Path) -> None:
    out = _judged(standin.write_kubeconfig(str(tmp_path / "kubeconfig.yaml")))
    assert out["kube_identity"] == [] and out["kube"] == []

