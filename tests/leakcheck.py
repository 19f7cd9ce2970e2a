"""Fails the run when plugbay leaves anything behind.

After every test module and at the end of the session this checks, for this
pytest process only (other test runs on the machine are left alone):
processes descended from pytest, and processes that carry this run's mark in
their environment though no longer descended from it (orphans: their parent
exited first), threads named plugbay-* (but the spawn thread, which
lives for the process), entries in the session's private
TMPDIR (plugin socket dirs, temp files), Docker containers labelled with this
process's host session id or with this run's mark (a Kubernetes stand-in's pod containers, the stand-in in a
process of its own too), reattach claims this process made and did not
release, container records (madehere.py) that appeared during the module (or
session) and whose container is gone from the engine the tests use (DOCKER_HOST, else the local socket)
while that engine made it (a record naming another engine is that engine's to judge), and whose host is
this process, one descended from it, or gone (a live host of another run's, a concurrent pytest session of
the same user say, is left to that run), new or newly changed files in the checkout (a plugin run with
the checkout as its working folder), and new or newly written kv_<key>
files in the run's working folder (the KV and counter examples store their
keys where they run; the checkout ignores those files, so git does not
list them). At the end of the session, once every fixture is gone, it
also checks this process's open descriptors of every kind (pipes, sockets,
pidfds, eventfds, epoll sets, files) against those it had at the start:
neither grpcio (its pollers and wakeup fds close with the last channel and
server) nor Python keeps one of its own past that point.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.procs import descendants

_SESSION_TMP = Path(f"/tmp/plugbay-test-{os.getpid()}")
# pytest's own tmp_path folders live here too and are cleaned by pytest.
_IGNORED_TMP = ("pytest-of-",)
_REPO = Path(__file__).resolve().parent.parent
_UNTRACKED_AT_START: set[str] = set()
_WORKDIR = Path.cwd()  # the run's, whatever folder a test moves to for a while
_KV_FILES_AT_START: dict[str, int] = {}
# inherited by every process this run starts (unless a test gives it a clean environment): one
# still running but no longer descended from pytest is an orphan this run left
_RUN_MARK_NAME = "LEAKCHECK_RUN"
_RUN_MARK = f"{os.getpid()}-{uuid.uuid4().hex}"
_STANDIN_RUN = "plugbay.standin.run"  # the Kubernetes stand-in's label with that mark on its pods' containers
_FDS_AT_START: dict[int, str] = {}
_ENGINE_ANSWERED: list[bool] = []  # a Docker check succeeded in this run
_FD_MODULE: dict[tuple[int, str], str] = {}  # a descriptor -> the test module it first stayed open after
_RECORDS_AT_START: set[str] = set()  # the container records there were when the session started
_RECORDS_BASELINE: set[str] = set()  # ... when the running module started (the session's, at its end)
# processes a session-scoped fixture holds for the whole run (tests/second_engine.py's dockerd), and theirs:
# not a module's leak. The fixture drops its pid once it stopped it; one it failed to stop is a leak at the end
SESSION_HELD: set[int] = set()


def _untracked() -> set[str]:
    """Untracked files, and tracked ones changed since HEAD (``M path``), in the checkout."""
    try:
        out = subprocess.run(["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=all"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    return {line[3:] if line.startswith("??") else f"M {line[3:]}" for line in out.splitlines()}


def _kv_files() -> dict[str, int]:
    """The KV examples' key files (kv_<key>) in the run's working folder, each with when it was last written."""
    found: dict[str, int] = {}
    for path in _WORKDIR.glob("kv_*"):
        try:
            found[path.name] = path.lstat().st_mtime_ns
        except OSError:
            continue  # removed meanwhile
    return found


def _new_kv_files() -> list[str]:
    return sorted(name for name, written in _kv_files().items() if _KV_FILES_AT_START.get(name) != written)


def _descriptors() -> dict[int, str]:
    """This process's open descriptors and what each is (pipe:[..], socket:[..], anon_inode:[pidfd], a path)."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc/self/fd"):
        try:
            found[int(entry)] = os.readlink(f"/proc/self/fd/{entry}")
        except OSError:
            continue  # the listing's own descriptor, or one closed meanwhile
    return found


def _pipes_and_sockets() -> dict[int, str]:
    return {fd: target for fd, target in _descriptors().items() if target.startswith(("pipe:", "socket:"))}


def pytest_configure(config: pytest.Config) -> None:
    _SESSION_TMP.mkdir(mode=0o700, exist_ok=True)
    os.environ["TMPDIR"] = str(_SESSION_TMP)
    tempfile.tempdir = str(_SESSION_TMP)
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    os.environ[_RUN_MARK_NAME] = _RUN_MARK
    _UNTRACKED_AT_START.update(_untracked())
    _KV_FILES_AT_START.update(_kv_files())


def pytest_sessionstart(session: pytest.Session) -> None:
    _FDS_AT_START.update(_descriptors())  # once every plugin configured (hangwatch keeps a stderr)
    _RECORDS_AT_START.update(_record_entries())
    _docker_leaks()  # an engine that answers now must answer every later check


def _marked(pid: int) -> bool:
    """Whether process ``pid`` carries this run's mark, or this process's plugbay host session (False: gone,
    not ours to read, or another run's)."""
    from plugbay.runners.proctree import ENV_HOST_SESSION, host_session

    marks = {f"{_RUN_MARK_NAME}={_RUN_MARK}".encode(), f"{ENV_HOST_SESSION}={host_session()}".encode()}
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return not marks.isdisjoint(f.read().split(b"\0"))
    except OSError:
        return False


def _orphans(known: set[int]) -> list[str]:
    """Processes with this run's mark, or this process's plugbay host session (a plugin started with
    a clean environment has only that), that are neither pytest nor descended from it."""
    out: list[str] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in known or not _marked(int(entry)):
            continue
        try:
            name = Path(f"/proc/{entry}/comm").read_text().strip()
        except OSError:
            continue  # gone meanwhile
        out.append(f"orphaned process {entry} ({name})")
    return out


def _claims() -> list[str]:
    """Reattach claims this process made (named PID-..., holding its host session) and did not release."""
    from plugbay.runners.procclaims import _claims_roots
    from plugbay.runners.proctree import host_session

    mine = host_session()
    found: list[str] = []
    for root in _claims_roots():
        try:  # a folder another process removes meanwhile (a sweep of /tmp) is one without our claims
            paths = list(root.glob(f"*/{os.getpid()}-*"))
        except OSError:
            continue
        for path in paths:
            try:
                if path.read_text().strip() == mine:  # not a stale one of an earlier process with this pid
                    found.append(f"reattach claim {path}")
            except OSError:
                continue
    return found


def _record_entries() -> set[str]:
    """The container records (madehere.py) of this user, by path: any process's, this run's subprocesses' too."""
    from plugbay.runners.docker.madehere import records_roots

    found: set[str] = set()
    for root in records_roots():
        try:
            found.update(str(path) for path in root.iterdir() if not path.name.startswith("."))
        except OSError:
            continue  # no folder (its last record went), or not ours
    return found


def _engine_configured() -> bool:
    """Whether the tests have an engine to use: DOCKER_HOST names one (the docker SDK and plugbay take it), or
    the local socket exists."""
    return bool(os.environ.get("DOCKER_HOST")) or os.path.exists("/var/run/docker.sock")


def _this_runs(session: str, start: str) -> bool:
    """Whether a record's host is this run's: this process, one that carries this run's mark (as _orphans
    tells them: a host this run started, a child of it or not any more), or one no longer running (a crashed
    host: whose it was cannot be told once it is gone). A live host of another run (another pytest session of
    this user, its hosts: their mark is their run's) is not, even where it descends from this one."""
    from plugbay.runners.session import session_alive

    if not session_alive(session, start):
        return True
    try:
        pid = int(session.split("-", 1)[0])
    except ValueError:
        return True
    return pid == os.getpid() or _marked(pid)  # pytest's own /proc environ predates the mark it set


def _made_records() -> list[str]:
    """Records that appeared since the baseline (the module's start) whose container no longer exists on the
    engine that made it, the one the tests use: a test (or a host it crashed on purpose) that removed its
    container without dropping the record. Records of other engines, and of live hosts not of this run, are
    not this run's to judge."""
    new = _record_entries() - _RECORDS_BASELINE
    if not new or not _engine_configured():
        return []
    from plugbay.runners.docker.madehere import engine_identity, read_records

    try:
        import docker
        from docker.errors import NotFound

        client = docker.from_env(version="auto")
    except Exception:
        return []  # no engine to ask: the container check says whether one answered before
    found: list[str] = []
    try:
        try:
            tested = engine_identity(client)
        except Exception:
            return []  # the container check reports an engine that stopped answering
        for record in read_records():
            if str(record.path) not in new or record.engine not in (None, tested):
                continue
            if not _this_runs(record.session, record.start):
                continue
            try:
                client.api.inspect_container(record.container_id)
            except NotFound:
                if record.path.exists():  # not dropped meanwhile
                    found.append(f"container record {record.path} (its container is gone)")
            except Exception:
                continue  # the container check reports an engine that stopped answering
    finally:
        client.close()
    return found


def find_leaks() -> list[str]:
    leaks: list[str] = []
    procs = descendants(os.getpid())
    held = {*SESSION_HELD, *(pid for root in SESSION_HELD for pid, _ in descendants(root))}
    leaks += [f"process {pid} ({name})" for pid, name in procs if pid not in held]
    leaks += _orphans({os.getpid(), *held, *(pid for pid, _ in procs)})
    leaks += _claims()
    leaks += _made_records()
    # plugbay-spawn lives for the process by design: the die_with_host children it forked die with it
    leaks += [f"thread {t.name}" for t in threading.enumerate()
              if t.name.startswith("plugbay-") and t.name != "plugbay-spawn" and t.is_alive()]
    if _SESSION_TMP.exists():
        leaks += [f"temp entry {p}" for p in _SESSION_TMP.iterdir()
                  if not p.name.startswith(_IGNORED_TMP)]
    leaks += _docker_leaks()
    leaks += [f"new or changed file in the checkout: {f}" for f in sorted(_untracked() - _UNTRACKED_AT_START)]
    leaks += [f"a KV example's key file {_WORKDIR / name} (run the plugin in tmp_path)" for name in _new_kv_files()]
    return leaks


# grpc core's pollers, which grpc.aio starts at its first use in a process and keeps to the process's end:
# two epoll sets and two eventfds, seen after tests.test_async_client or tests.test_async_servicers in full
# runs, whichever came first. Past that many such descriptors are a leak (a grpc server never started keeps
# the same kinds: core/broker/spares.py).
_PROCESS_POLLERS = {"anon_inode:[eventpoll]": 2, "anon_inode:[eventfd]": 2}


def _fd_leaks() -> list[str]:
    spare = dict(_PROCESS_POLLERS)
    leaks = []
    for fd, target in sorted(_descriptors().items()):
        if _FDS_AT_START.get(fd) == target:
            continue
        if spare.get(target, 0) > 0:
            spare[target] -= 1
            continue
        leaks.append(f"open descriptor {fd} ({target}, open since {_FD_MODULE.get((fd, target), 'the session end')})")
    return leaks


def _docker_leaks() -> list[str]:
    if not _engine_configured():
        return []
    try:
        import docker

        from plugbay.runners.session import HOST_SESSION_ID

        client = docker.from_env(version="auto")
        try:
            found = client.containers.list(all=True, filters={"label": f"plugbay.session={HOST_SESSION_ID}"})
            # a Kubernetes stand-in in a process of its own labels its pods' containers with its session, not
            # this one's; the run's mark it inherited names them this run's (tests/kube_standin/orphans.py)
            seen = {c.id for c in found}
            found += [c for c in client.containers.list(all=True, filters={"label": f"{_STANDIN_RUN}={_RUN_MARK}"})
                      if c.id not in seen]
        finally:
            client.close()
    except Exception as exc:
        unreachable = "Connection" in type(exc).__name__ or "connect" in str(exc).lower()
        if unreachable and not _ENGINE_ANSWERED:
            return []  # no engine in this session: nothing of ours can be in it
        # one that answered before and no longer does (or any other failure) hides what it may hold
        return [f"docker check failed{' (the engine answered earlier in this run)' if unreachable else ''}: {exc}"]
    _ENGINE_ANSWERED.append(True)
    return [f"container {c.short_id} ({c.name}, {c.status})" for c in found]


def _settled_leaks(find: Callable[[], list[str]] = find_leaks) -> list[str]:
    # Killed processes and joined threads can take a moment to disappear.
    deadline = time.monotonic() + 10
    leaks = find()
    while leaks and time.monotonic() < deadline:
        time.sleep(0.2)
        leaks = find()
    return leaks


@pytest.fixture(scope="module", autouse=True)
def _no_leaks_after_module(request: pytest.FixtureRequest) -> object:
    before = _descriptors()
    _RECORDS_BASELINE.clear()
    _RECORDS_BASELINE.update(_record_entries())
    yield
    # a module's broader fixtures (a session's Docker client) may hold some until the session ends:
    # which module they came from is told only if they outlive it
    for fd, target in _descriptors().items():
        if before.get(fd) != target:
            _FD_MODULE.setdefault((fd, target), request.module.__name__)
    leaks = _settled_leaks()
    _UNTRACKED_AT_START.update(_untracked())  # report a stray file once, not after every module
    _KV_FILES_AT_START.update(_kv_files())
    if leaks:
        pytest.fail(f"{request.module.__name__} left resources behind:\n  " + "\n  ".join(leaks),
                    pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # garbage is no leak: a test's own reference cycle (pytest.raises in a coroutine keeps the exception,
    # its traceback the frame, the frame the client) holds a closed grpc.aio channel, and with it grpc.aio's
    # poller and its socket pair, only until the collector runs, which the session's order decides
    gc.collect()
    _RECORDS_BASELINE.clear()
    _RECORDS_BASELINE.update(_RECORDS_AT_START)
    leaks = _settled_leaks(lambda: find_leaks() + _fd_leaks())
    if leaks:
        print("\nplugbay leak check: the test session left resources behind:\n  " + "\n  ".join(leaks))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    else:
        print("\nplugbay leak check: no process, thread, temp entry, container, claim or descriptor"
              " left behind")
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)
