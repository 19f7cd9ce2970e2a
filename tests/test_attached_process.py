"""Local plugin processes: a reattached one (pid from untrusted JSON) and the ProcessRunner's edges.

Real processes throughout: a host's own zombie child named by reattach JSON, a plugin whose
leader died while its helpers run on, a reattached plugin's unknown exit code, a pid reused
after the plugin was reaped, and a SecureConfig-checked start that failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.resilience_util import PLUGIN_NAME, PLUGINS, HANDSHAKE, faulty_config, wait_until

from plugbay import Client, ClientConfig, PluginDiedError, ReattachError, RestartPolicy, Supervisor  # noqa: I001
from plugbay.core.host.secure import SecureConfig
from plugbay.errors import RunnerError
from plugbay.runners.base import LaunchSpec, reattach_runner
from plugbay.runners.process import ProcessRunner
from plugbay.runners.proctree import family

REPO = Path(__file__).resolve().parent.parent


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_reattach_json_naming_a_zombie_child_does_not_steal_its_exit_status() -> None:
    child = subprocess.Popen(["sh", "-c", "exit 3"])
    assert wait_until(lambda: not _running(child.pid), 5)  # a zombie child of this host now
    with pytest.raises((ReattachError, RunnerError)):
        reattach_runner({"kind": "ProcessRunner", "pid": child.pid, "start_time": 1, "plugin_id": "x"})
    assert child.wait(5) == 3, "the reattach reaped the host's child and took its exit status"


@pytest.mark.parametrize("pid", [2 ** 31, 2 ** 40, 10 ** 30])
def test_a_pid_no_process_can_have_is_a_reattach_error(pid: int) -> None:
    with pytest.raises(ReattachError, match=f"names pid {pid}, which is no plugin's"):
        reattach_runner({"kind": "ProcessRunner", "pid": pid, "start_time": 1, "plugin_id": "x"})


def test_a_reattached_kill_ends_the_plugins_helpers_when_its_leader_is_gone() -> None:
    runner = ProcessRunner(["sh", "-c", "setsid sleep 300 & sleep 300"])
    runner.start(LaunchSpec(env={}))
    try:
        assert wait_until(lambda: len(family(runner.pid, runner.plugin_id)) >= 2, 5)
        attached = reattach_runner(runner.reattach_data())  # as a second host would
        helpers = list(family(runner.pid, runner.plugin_id))
        os.kill(runner.pid, signal.SIGKILL)
        assert runner.wait(5) == -signal.SIGKILL
        attached.kill(0)
        assert wait_until(lambda: not any(_running(p) for p in helpers), 5), \
            "the plugin's helpers (its group, marked with its plugin id) outlived the kill"
    finally:
        runner.kill(0)


def test_a_reattached_plugins_unknown_exit_is_not_called_sighup(tmp_path: Path) -> None:
    first = Client(faulty_config(tmp_path))
    first.start()
    try:
        second = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, reattach=first.reattach_config()))
        second.start()
        kv = second.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        os.kill(first.runner.pid, signal.SIGKILL)
        assert wait_until(lambda: second.exited, 10)
        with pytest.raises(PluginDiedError) as raised:
            kv.get("k")
        said = str(raised.value)
        # the first Client, in this very process, is the plugin's parent: "not this host's child" was untrue
        assert "exit status is unknown" in said and f"this Client reattached to process {first.runner.pid}" in said
        assert "cannot read how it ended" in said and "host's child" not in said, said
        assert "-1" not in said and "SIGHUP" not in said, said  # the reattach data's pid holds no "-1"
        second.close()
    finally:
        first.kill()


def test_a_supervisor_says_a_reattached_plugins_exit_status_is_unknown_not_minus_one(tmp_path: Path) -> None:
    first = Client(faulty_config(tmp_path))
    first.start()
    try:
        policy = RestartPolicy(max_restarts=2, window=120, initial_backoff=0.05)
        with Supervisor(lambda: faulty_config(tmp_path), reattach=first.reattach_config(), restart=policy,
                        health_interval=0.2) as sup:
            sup.dispense(PLUGIN_NAME).put("k", b"v")
            os.kill(first.runner.pid, signal.SIGKILL)
            assert wait_until(lambda: sup.failures >= 1, 10)
            failure = [e.detail for e in sup.events if e.kind == "failure"][0]
            assert "exit status is unknown" in failure and "host's child" not in failure, failure
            assert f"this Client reattached to process {first.runner.pid}" in failure, failure
            assert "code -1" not in failure, failure
    finally:
        first.kill()


def test_has_exited_stays_true_once_reaped_even_when_the_pid_is_reused() -> None:
    last_pid = Path("/proc/sys/kernel/ns_last_pid")
    if not os.access(last_pid, os.W_OK):
        pytest.skip("cannot choose the next pid (/proc/sys/kernel/ns_last_pid is not writable)")
    runner = ProcessRunner(["sh", "-c", "exit 7"])
    runner.start(LaunchSpec(env={}))
    assert runner.wait(5) == 7
    pid, other = runner.pid, None
    try:
        for _ in range(50):
            last_pid.write_text(str(pid - 1))
            other = subprocess.Popen(["sleep", "30"])
            if other.pid == pid:
                break
            other.kill()
            other.wait()
            other = None
        if other is None:
            pytest.skip("could not hand the plugin's pid to another process")
        assert runner.has_exited(), "a reaped plugin whose pid another process took reads as running"
    finally:
        runner.kill(0)
        if other is not None:
            other.kill()
            other.wait()


def test_a_checked_start_that_failed_cannot_be_retried_with_the_unchecked_file(tmp_path: Path) -> None:
    plugin = tmp_path / "plug.sh"
    plugin.write_text("#!/bin/sh\necho checked\n")
    plugin.chmod(0o755)
    runner = ProcessRunner([str(plugin)], cwd=str(tmp_path / "missing"))
    runner.check_secure_config(SecureConfig(hashlib.sha256(plugin.read_bytes()).digest()))
    with pytest.raises(RunnerError, match="cannot start plugin"):
        runner.start(LaunchSpec(env={}))
    plugin.write_text("#!/bin/sh\necho unchecked\n")  # replaced after the check
    (tmp_path / "missing").mkdir()
    try:
        with pytest.raises(RunnerError, match="start that failed.*make a new runner"):
            runner.start(LaunchSpec(env={}))
        assert runner.wait(0) is None
    finally:
        runner.kill(0)


HOST_CRASHES = """
import os, sys
sys.path.insert(0, sys.argv[1])
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin
from plugbay import Client, ClientConfig
c = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=[sys.executable, sys.argv[2]]))
c.start()
print(c.reattach_config().to_json(), flush=True)
os._exit(0)
"""
SWEEP = "from plugbay.runners.process import sweep; print(sweep())"


def test_sweep_spares_a_plugin_a_live_host_reattached_to(tmp_path: Path) -> None:
    import json
    import sys

    from plugbay import ReattachConfig
    from tests.resilience_util import KV_EXAMPLE, REPO

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", HOST_CRASHES, str(REPO / "examples" / "kv"), KV_EXAMPLE],
                         capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    saved = ReattachConfig.from_json(out.stdout.strip().splitlines()[-1])
    pid = int(saved.runner["pid"])
    adopter = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, reattach=saved))
    other = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, reattach=saved))
    try:
        adopter.start()
        other.start()
        other.close()  # a second adopter lets go: the first one's claim still stands
        kv = adopter.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        swept = subprocess.run([sys.executable, "-c", SWEEP], capture_output=True, text=True, timeout=60, env=env)
        assert pid not in json.loads(swept.stdout.strip() or "[]"), "another host's sweep killed the adopted plugin"
        assert kv.get("k") == b"v"
    finally:
        other.close()
        adopter.kill()
        shutil.rmtree(os.path.dirname(saved.handshake.address), ignore_errors=True)  # the crashed host's
    assert wait_until(lambda: not _running(pid), 10)
    from plugbay.runners.procclaims import _claims_roots
    for root in _claims_roots():
        assert not (root / str(saved.runner["plugin_id"])).exists(), "the kill left its claim behind"


def test_claims_are_read_one_by_one_and_those_of_ended_plugins_are_forgotten(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from plugbay.runners import procclaims, proctree

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    plugin_id = "ab" * 16
    name = procclaims.claim(plugin_id)
    assert name is not None
    # an entry that cannot be read as a claim (or a claim released between listing and reading)
    # must not hide the live one, or sweep() would kill an adopted plugin
    roots = procclaims._claims_roots(written=True)
    assert roots[0] == tmp_path / f"plugbay-claims-{os.getuid()}" and len(roots) == 3  # and /tmp's, ~/.cache's
    (roots[0] / plugin_id / "0-odd").mkdir()
    assert set(procclaims.claimants(plugin_id).values()) == {proctree.host_session()}
    assert proctree._adopted(plugin_id, None, "another-session")
    ended = "cd" * 16
    assert procclaims.claim(ended) is not None
    procclaims.forget_claims_of_ended({plugin_id})  # no running process carries `ended` any more
    for root in roots:
        assert not (root / ended).exists()
        assert (root / plugin_id / name).exists()
    (roots[0] / plugin_id / "0-odd").rmdir()
    procclaims.release(plugin_id, name)
    assert not roots[0].exists(), "the last release left the claims folder behind"
    assert not (roots[1] / plugin_id).exists() and not (roots[2] / plugin_id).exists()


def test_a_sweep_without_the_adopters_xdg_runtime_dir_still_finds_its_claim(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # cron or a system service sweeps with another XDG_RUNTIME_DIR (or none) than the login
    # session of the host that reattached: its claim must be found all the same
    from plugbay.runners import procclaims, proctree

    plugin_id = "ef" * 16
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "session"))
    (tmp_path / "session").mkdir(mode=0o700)
    name = procclaims.claim(plugin_id)
    assert name is not None
    try:
        for env in ({"XDG_RUNTIME_DIR": str(tmp_path / "elsewhere")}, {}):
            monkeypatch.delenv("XDG_RUNTIME_DIR")
            for key, value in env.items():
                monkeypatch.setenv(key, value)
            assert proctree._adopted(plugin_id, None, "another-session"), env
    finally:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "session"))
        procclaims.release(plugin_id, name)
    assert not (tmp_path / "session" / f"plugbay-claims-{os.getuid()}").exists()


_OTHER_USER = 4242  # no such user here: only these tests' processes run as it
_ADOPTER = """
import os, secrets, subprocess, sys, time
from plugbay.runners import procclaims
plugin_id = secrets.token_hex(16)
env = {**os.environ, "PLUGBAY_PLUGIN_ID": plugin_id, "PLUGBAY_HOST_SESSION": "999999-deadbeef.12345"}  # host gone
plugin = subprocess.Popen(["sleep", "60"], env=env)
name = procclaims.claim(plugin_id)  # this live process reattached to it
print(plugin.pid, name, flush=True)
sys.stdin.readline()  # the sweep runs now
print(plugin.poll() is None, flush=True)
plugin.kill()
plugin.wait()
procclaims.release(plugin_id, name)
"""
_SWEEP = """
import json, sys
from plugbay.runners import proctree
proctree._pids = lambda: [int(sys.argv[1])]  # never any other process than the test's own plugin
proctree.forget_claims_of_ended = lambda running: None
print(json.dumps(proctree.sweep()))
"""


def _as_other_user(command: list[str], **kw: Any) -> subprocess.Popen[str]:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and util-linux's setpriv to run a process as another user")
    return subprocess.Popen(["setpriv", "--reuid", str(_OTHER_USER), "--regid", str(_OTHER_USER), "--clear-groups",
                             *command], text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, **kw)


@pytest.mark.parametrize("case", ["root-sweeps", "tmp-folder-taken"])
def test_another_users_adopted_plugin_survives_a_sweep(case: str) -> None:
    base = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}  # a service's: no login session
    home = Path(tempfile.mkdtemp(prefix="home-", dir="/tmp"))  # not in the tests' 0700 folders: the user enters it
    os.chown(home, _OTHER_USER, _OTHER_USER)
    env = {**base, "HOME": str(home), "PYTHONPATH": str(REPO / "src")}
    taken = Path(f"/tmp/plugbay-claims-{_OTHER_USER}")
    if case == "tmp-folder-taken":  # a third user made the /tmp claims folder's name first
        taken.mkdir(mode=0o755)
        os.chown(taken, _OTHER_USER + 1, _OTHER_USER + 1)
    adopter = _as_other_user([sys.executable, "-c", _ADOPTER], env=env, cwd=home)
    pid_text = ""
    try:
        assert adopter.stdout is not None and adopter.stdin is not None
        pid_text, name = adopter.stdout.readline().split()
        assert name != "None", "the adopter could record no claim"
        sweep = [sys.executable, "-c", _SWEEP, pid_text]
        if case == "root-sweeps":  # as root: it sees every user's plugins, and must look for their claims
            swept = subprocess.run(sweep, capture_output=True, text=True, timeout=60, env=env)
        else:  # the same user, from another process (cron)
            other = _as_other_user(sweep, env=env, cwd=home)
            out, _ = other.communicate(timeout=60)
            swept = subprocess.CompletedProcess(sweep, other.returncode, out, "")
        assert swept.returncode == 0, swept.stderr
        assert json.loads(swept.stdout) == [], "the sweep killed a plugin a live host had reattached to"
        adopter.stdin.write("\n")
        adopter.stdin.flush()
        assert adopter.stdout.readline().strip() == "True"
        assert adopter.wait(30) == 0
    finally:
        adopter.kill()
        adopter.wait(30)
        if pid_text and _running(int(pid_text)):  # its plugin, when the test failed before it ended it
            os.kill(int(pid_text), signal.SIGKILL)
        shutil.rmtree(taken, ignore_errors=True)
        shutil.rmtree(f"/tmp/plugbay-claims-{_OTHER_USER}", ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


def test_a_root_sweep_never_reads_another_users_claims_folder(tmp_path: Path) -> None:
    # another user's folder could hold a link to root's files (a sweep would delete them as stale
    # claims) or a pipe (a sweep would hang reading it): a sweep leaves other users' plugins alone
    if os.geteuid() != 0:
        pytest.skip("needs root: the case is a sweep run as root")
    import secrets

    from plugbay.runners import proctree

    plugin_id = secrets.token_hex(16)
    precious = tmp_path / "root-only"
    precious.mkdir(mode=0o700)
    (precious / "important.conf").write_text("keep")
    folder = Path(f"/tmp/plugbay-claims-{_OTHER_USER}")
    folder.mkdir(mode=0o700)
    os.symlink(precious, folder / plugin_id)
    os.mkfifo(folder / ("ab" * 16))
    os.chown(folder, _OTHER_USER, _OTHER_USER)
    env = {**os.environ, "PLUGBAY_PLUGIN_ID": plugin_id, "PLUGBAY_HOST_SESSION": "999999-deadbeef.12345"}
    plugin = _as_other_user(["sleep", "60"], env=env, cwd="/")
    try:
        assert wait_until(lambda: (proctree.environ(plugin.pid) or {}).get("PLUGBAY_PLUGIN_ID") == plugin_id, 10)
        swept = subprocess.run([sys.executable, "-c", _SWEEP, str(plugin.pid)], capture_output=True, text=True,
                               timeout=60)
        assert swept.returncode == 0, swept.stderr
        assert json.loads(swept.stdout) == [] and plugin.poll() is None  # theirs to sweep
        assert (precious / "important.conf").read_text() == "keep"
    finally:
        plugin.kill()
        plugin.wait(30)
        shutil.rmtree(folder, ignore_errors=True)
