"""This machine's process tree, read from /proc: who descends from whom (the leak check, the Go
test hosts' run_program and the tests that look for a plugin's children use it); and this
process's own TCP connections to a port (the Kubernetes API client tests); and a plugin process
started as a plugbay host asks it to outlive the host (its stderr pipe named)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, command name) of every process that can be read now."""
    found: dict[int, tuple[int, str, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # the command name is in parentheses and may itself hold spaces and parentheses
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        found[int(entry)] = (int(ppid), state, stat[stat.index("(") + 1:stat.rindex(")")])
    return found


def children(pid: int, *, zombies: bool = True) -> list[int]:
    """The processes whose parent is ``pid`` (``zombies=False``: only those still running)."""
    return [p for p, (ppid, state, _) in table().items() if ppid == pid and (zombies or state != "Z")]


def stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (its /proc state T): a SIGSTOP, which is asynchronous, has taken hold."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "T"


def descendants(root: int) -> list[tuple[int, str]]:
    """(pid, command name) of every process descended from ``root``."""
    procs = table()
    out: list[tuple[int, str]] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, name) in procs.items():
            if ppid == parent:
                out.append((pid, name))
                frontier.append(pid)
    return out


def connections_to(port: int) -> int:
    """This process's open TCP connections to 127.0.0.1:``port`` (from /proc, no garbage collection first)."""
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            mine.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue  # closed meanwhile
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in list(table)[1:]]
    return sum(1 for r in rows if int(r[2].split(":")[1], 16) == port and f"socket:[{r[9]}]" in mine)


def outlive_pipe() -> tuple[int, int, str]:
    """A pipe for a plugin's stderr (read end, write end) and the PLUGBAY_OUTLIVE_PIPE value naming it: what a
    plugbay host's ProcessRunner sets to ask its plugin to outlive it. Spelled here, not taken from plugbay."""
    read, write = os.pipe()
    facts = os.fstat(write)
    return read, write, f"pipe:{facts.st_dev}:{facts.st_ino}"


def popen_asked_to_outlive(args: list[str], env: dict[str, str], **popen: Any) -> subprocess.Popen[bytes]:
    """A plugin process asked to outlive its host as a plugbay host's ProcessRunner asks: its stderr a pipe made
    here (``proc.stderr`` its read end) named in PLUGBAY_OUTLIVE_PIPE, PLUGBAY_OUTLIVE_HOST=1 unless ``env`` says."""
    read, write, named = outlive_pipe()
    try:
        proc = subprocess.Popen(args, env={"PLUGBAY_OUTLIVE_HOST": "1", **env, "PLUGBAY_OUTLIVE_PIPE": named},
                                stderr=write, **popen)
    except BaseException:
        os.close(read)  # no process holds it: a failed spawn left nothing open
        raise
    finally:
        os.close(write)  # the plugin's stderr reports its end only once this copy is gone too
    proc.stderr = open(read, "rb", buffering=0)
    return proc


def gone(pid: int) -> bool:
    """Whether ``pid`` has ended: no such process, or a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


def live_with_env(name: str, value: str) -> list[int]:
    """The live processes whose environment holds ``name=value`` (a test's mark on what it started)."""
    entry_bytes, found = f"{name}={value}".encode(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if entry_bytes in environ.split(b"\0") and not gone(int(entry.name)):
                found.append(int(entry.name))
    return found


def first_line_then_sigkill(argv: Sequence[str], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run ``argv`` (a host program that prints one JSON line of facts once its plugin runs), read that
    line, then kill the program with SIGKILL, so that it cleans up nothing: its facts."""
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, text=True, env=None if env is None else dict(env))
    try:
        assert proc.stdout is not None
        facts: dict[str, Any] = json.loads(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()
    return facts


def run_marked_host(argv: Sequence[str], cwd: Path, timeout: float, *,
                    finally_: Any = None) -> tuple[str, str, int, list[int]]:
    """Run a host script with a fresh FORK_TEST mark in its environment (so in its forked children's and
    every plugin they start): (stdout, stderr, exit status, the marked pids still alive, SIGKILLed).
    A hung host is killed with what it started; ``finally_`` (a callable) runs after, whatever happened."""
    import uuid

    mark = uuid.uuid4().hex
    host = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env={**os.environ, "FORK_TEST": mark})
    out = err = ""
    try:
        out, err = host.communicate(timeout=timeout)
    finally:
        if host.poll() is None:
            host.kill()
            host.communicate()
        left = live_with_env("FORK_TEST", mark)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        if finally_ is not None:
            finally_()
    return out, err, host.returncode, left


def end(proc: subprocess.Popen[Any]) -> None:
    """Kill ``proc`` if it still runs, and reap it (its pipes read to their end); one that ended is left."""
    if proc.poll() is None:
        proc.kill()
        proc.communicate(timeout=10)


def end_closing(proc: subprocess.Popen[Any]) -> None:
    """Kill ``proc`` if it still runs, reap it and close the pipes the test opened to it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def end_host(host: subprocess.Popen[Any]) -> None:
    """Kill ``host`` if it still runs, reap it and close its stdout pipe (a host the test started)."""
    if host.poll() is None:
        host.kill()
    host.wait(10)
    if host.stdout is not None:
        host.stdout.close()
