"""The fault suite: every fault type, injected PLUGBAY_FAULTS_SIZE times (default 3).

Each injection must: end every call within its deadline + 100 ms, raise only
plugbay errors (which are also grpc.RpcError), recover (the Supervisor
restarts or reattaches; fault -> first successful call), leave nothing behind
(processes, plugbay-* threads, fds, temp entries, containers, volumes,
namespaces, pods) and lose no acknowledged write. bench/bench_faults.py runs
the same injectors at a large size and prints the table.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.injectors import FAULTS
from tests.faults.probe import Record
from tests.faults.runner import run, size_from_env
from tests.faults.targets import Unavailable

SIZE = size_from_env()


def _param(name: str) -> Any:
    mark = FAULTS[name].mark if name in FAULTS else None
    return pytest.param(name, marks=[getattr(pytest.mark, mark)] if mark else [], id=name)


def _records(name: str, workdir: Path) -> list[Record]:
    try:
        return list(run(name, SIZE, workdir))
    except Unavailable as exc:
        pytest.skip(str(exc))


def _judge(records: list[Record]) -> None:
    """Recovered, no hung call, only plugbay errors, nothing left, no acknowledged write lost.

    (Call errors that are plugbay errors but not grpc.RpcError are checked by
    test_a_call_waiting_for_a_restart_fails_with_an_rpc_error, deterministically.)
    """
    assert len(records) == SIZE
    bad = [r.problems() for r in records if not r.ok]
    assert not bad, "\n".join(bad)
    assert all(r.recovery_s is not None for r in records)


@pytest.mark.parametrize("name", [_param(n) for n in ["kill9-python", "kill9-go", "sigstop", "hang",
                                                      "host-kill"]])
def test_process_faults(name: str, tmp_path: Path) -> None:
    records = _records(name, tmp_path)
    _judge(records)
    if name.startswith("kill9"):
        assert all(r.restarts >= 1 for r in records), [r.restarts for r in records]


@pytest.mark.docker
@pytest.mark.parametrize("name", ["docker-kill", "docker-pause"])
def test_container_faults(name: str, tmp_path: Path) -> None:
    records = _records(name, tmp_path)
    _judge(records)
    if name == "docker-kill":
        assert all(r.restarts >= 1 for r in records)


@pytest.mark.netns
@pytest.mark.parametrize("name", ["net-blackhole", "net-latency", "net-reset"])
def test_network_faults(name: str, tmp_path: Path) -> None:
    _judge(_records(name, tmp_path))


@pytest.fixture(scope="module")
def kube_parts() -> Iterator[tuple[Any, str]]:
    from tests.kube_standin.fixtures import need_docker

    need_docker()
    from tests.kube_standin.images import kvtrap_image
    from tests.kube_standin.server import StandIn

    image = kvtrap_image()
    server = StandIn(runtime="docker").start()
    try:
        yield server, image
    finally:
        server.stop()


@pytest.mark.kubernetes
@pytest.mark.docker
def test_pod_deleted(kube_parts: tuple[Any, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.faults import injectors, targets

    standin, image = kube_parts
    fault = injectors.FAULTS["pod-delete"]
    shared = injectors.Fault(fault.name, lambda wd: targets.kube(wd, standin, image), fault.inject,
                             budget=fault.budget, mark=fault.mark)
    monkeypatch.setitem(injectors.FAULTS, "pod-delete", shared)
    records = _records("pod-delete", tmp_path)
    _judge(records)
    assert all(r.lost_writes is None for r in records)  # a deleted pod's files are gone by design
    assert all(r.restarts >= 1 for r in records)


def test_a_call_waiting_for_a_restart_fails_with_an_rpc_error(tmp_path: Path) -> None:
    """A call that waits out its deadline for a slow restart: a CallTimeoutError that is a grpc.RpcError."""
    import grpc

    from plugbay import CallTimeoutError, ProcessRunner, RestartPolicy, Supervisor
    from tests.faults.probe import Caller
    from tests.faults.targets import KV_EXAMPLE, PY, kv_config
    from tests.resilience_util import wait_until

    slow = ("import runpy, sys, time; time.sleep(3); sys.argv = [sys.argv[1]];"
            " runpy.run_path(sys.argv[0], run_name='__main__')")
    starts = iter([[PY, KV_EXAMPLE]])

    def factory() -> Any:
        return kv_config(ProcessRunner(next(starts, [PY, "-c", slow, KV_EXAMPLE]), cwd=tmp_path))

    record = Record("slow-restart", 0)
    with Supervisor(factory, restart=RestartPolicy(max_restarts=2, initial_backoff=0.05),
                    health_interval=None) as sup:
        caller = Caller(sup.channel, record)
        assert caller.call("Put", "k", b"v")[0]
        os.kill(sup.current_client.runner.pid, signal.SIGKILL)  # type: ignore[union-attr]
        assert wait_until(lambda: sup.state == "restarting", 10)  # the slow start is under way
        ok, err = caller.call("Put", "k2", b"v", deadline=0.5)
        assert not ok and isinstance(err, CallTimeoutError), err
        assert not record.hung_calls, record.hung_calls
        assert isinstance(err, grpc.RpcError), (
            f"defect: the Supervisor's ReadyGate raises {type(err).__name__}, which is not a grpc.RpcError,"
            " while every other call failure is (code DEADLINE_EXCEEDED expected)")
