"""Fails the run when plugbay leaves anything behind.

After every test module and at the end of the session this checks, for this
pytest process only (other test runs on the machine are left alone):
processes descended from pytest, threads named plugbay-*, entries in the
session's private TMPDIR (plugin socket dirs, temp files), Docker
containers labelled with this process's host session id, and new untracked
files in the checkout (a plugin run with the checkout as its working folder).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

_SESSION_TMP = Path(f"/tmp/plugbay-test-{os.getpid()}")
# pytest's own tmp_path folders live here too and are cleaned by pytest.
_IGNORED_TMP = ("pytest-of-",)
_REPO = Path(__file__).resolve().parent.parent
_UNTRACKED_AT_START: set[str] = set()


def _untracked() -> set[str]:
    try:
        out = subprocess.run(["git", "-C", str(_REPO), "ls-files", "--others", "--exclude-standard"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    return set(out.splitlines())


def pytest_configure(config: pytest.Config) -> None:
    _SESSION_TMP.mkdir(mode=0o700, exist_ok=True)
    os.environ["TMPDIR"] = str(_SESSION_TMP)
    tempfile.tempdir = str(_SESSION_TMP)
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    _UNTRACKED_AT_START.update(_untracked())


def _descendants(root: int) -> list[tuple[int, str]]:
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        pid = int(entry)
        # the command name is in parentheses and may itself hold spaces
        names[pid] = stat[stat.index("(") + 1:stat.rindex(")")]
        parents[pid] = int(stat[stat.rindex(")") + 2:].split()[1])
    out: list[tuple[int, str]] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent:
                out.append((pid, names[pid]))
                frontier.append(pid)
    return out


def find_leaks() -> list[str]:
    leaks: list[str] = []
    procs = _descendants(os.getpid())
    leaks += [f"process {pid} ({name})" for pid, name in procs]
    leaks += [f"thread {t.name}" for t in threading.enumerate()
              if t.name.startswith("plugbay-") and t.is_alive()]
    if _SESSION_TMP.exists():
        leaks += [f"temp entry {p}" for p in _SESSION_TMP.iterdir()
                  if not p.name.startswith(_IGNORED_TMP)]
    leaks += _docker_leaks()
    leaks += [f"new untracked file in the checkout: {f}" for f in sorted(_untracked() - _UNTRACKED_AT_START)]
    return leaks


def _docker_leaks() -> list[str]:
    if not os.path.exists("/var/run/docker.sock"):
        return []
    try:
        import docker

        from plugbay.runners.session import HOST_SESSION_ID

        client = docker.from_env(version="auto")
        try:
            found = client.containers.list(all=True, filters={"label": f"plugbay.session={HOST_SESSION_ID}"})
            return [f"container {c.short_id} ({c.name}, {c.status})" for c in found]
        finally:
            client.close()
    except Exception as exc:  # the engine may be down; that is not a leak
        return [] if "Connection" in type(exc).__name__ or "connect" in str(exc).lower() else [f"docker check failed: {exc}"]


def _settled_leaks() -> list[str]:
    # Killed processes and joined threads can take a moment to disappear.
    deadline = time.monotonic() + 10
    leaks = find_leaks()
    while leaks and time.monotonic() < deadline:
        time.sleep(0.2)
        leaks = find_leaks()
    return leaks


@pytest.fixture(scope="module", autouse=True)
def _no_leaks_after_module(request: pytest.FixtureRequest) -> object:
    yield
    leaks = _settled_leaks()
    _UNTRACKED_AT_START.update(_untracked())  # report a stray file once, not after every module
    if leaks:
        pytest.fail(f"{request.module.__name__} left resources behind:\n  " + "\n  ".join(leaks),
                    pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leaks = _settled_leaks()
    if leaks:
        print("\nplugbay leak check: the test session left resources behind:\n  " + "\n  ".join(leaks))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    else:
        print("\nplugbay leak check: no process, thread, temp entry or container left behind")
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)
