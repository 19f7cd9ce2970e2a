"""The host-kill fault: a host process is SIGKILLed; a new host reattaches to its plugin.

Each injection: a host subprocess (tests.faults.hostproc) starts the KV
plugin, writes one key and the reattach JSON, and is SIGKILLed. A Supervisor
in this process then starts with ``reattach=`` that JSON; recovery is the
time from the kill to its first successful call, and the key the dead host
wrote must still be readable. Stopping the Supervisor must end the plugin
(which is no longer a descendant of this process, so it is checked by pid).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from plugbay import ProcessRunner, ReattachConfig, RestartPolicy, Supervisor
from tests.faults.probe import (
    Caller,
    Record,
    Snapshot,
    check_writes,
    probe_until_ok,
    settled_leaks,
)
from tests.faults.targets import KV_EXAMPLE, PY, REPO, kv_config
from tests.procs import end_host


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def run_host_kill(size: int, workdir: Path) -> Iterator[Record]:
    cwd = workdir / "host-kill"
    cwd.mkdir(exist_ok=True)
    for index in range(size):
        yield _once(index, cwd)


def _once(index: int, cwd: Path) -> Record:
    record = Record("host-kill", index)
    before = Snapshot.take()
    reattach_file = cwd / f"reattach-{index}.json"
    key, value = f"h{index}", os.urandom(8).hex()
    # The host's own TMPDIR: what a SIGKILLed host leaves there is reported, not counted as a plugbay
    # leak (the Supervisor that reattached removes its plugin's socket folder once it stopped the plugin).
    host_tmp = Path(tempfile.mkdtemp(prefix="pbhk"))  # short: unix socket paths hold 107 bytes
    host = subprocess.Popen([PY, "-m", "tests.faults.hostproc", str(cwd), str(reattach_file), key, value],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO}", "TMPDIR": str(host_tmp)})
    plugin_pid = 0
    try:
        seen = []
        for _ in range(200):  # the host prints "ready" (after any warnings) or dies
            line = host.stdout.readline() if host.stdout else ""
            if not line or line.strip() == "ready":
                break
            seen.append(line.rstrip())
        if line.strip() != "ready":
            record.detail += f" the host process did not get ready (exit {host.poll()}): {seen[-5:]};"
            return record
        cfg = ReattachConfig.from_json(reattach_file.read_text())
        plugin_pid = int(cfg.runner.get("pid", 0))
        host.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        host.wait(10)
        acked = {key: value.encode()}
        policy = RestartPolicy(max_restarts=2, window=600, initial_backoff=0.05)
        with Supervisor(lambda: kv_config(ProcessRunner([PY, KV_EXAMPLE], cwd=cwd)), reattach=cfg,
                        restart=policy, health_interval=0.25, name="faults-host-kill") as sup:
            caller = Caller(sup.channel, record)
            probe_until_ok(caller, f"h{index}", killed, 30.0, acked)
            kinds = [e.kind for e in sup.events]
            if kinds[:1] != ["reattached"]:
                record.unexpected.append(f"the new host did not reattach (events {kinds})")
            record.lost_writes = check_writes(caller, acked)
            record.restarts = sup.restarts
    finally:
        end_host(host)
        reattach_file.unlink(missing_ok=True)
    end = time.monotonic() + 10
    while plugin_pid and _alive(plugin_pid) and time.monotonic() < end:
        time.sleep(0.05)
    if plugin_pid and _alive(plugin_pid):
        record.leaks.append(f"reattached plugin process {plugin_pid} still runs after the Supervisor stopped")
        os.kill(plugin_pid, signal.SIGKILL)  # this test started it (through its host process)
    left = sorted(p.name for p in host_tmp.iterdir())
    if left:
        record.detail += f" the killed host left {len(left)} temp entr{'y' if len(left) == 1 else 'ies'} (its plugin socket folder);"
    shutil.rmtree(host_tmp, ignore_errors=True)
    record.leaks += settled_leaks(before)
    return record
