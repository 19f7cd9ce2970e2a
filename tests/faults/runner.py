"""Run injections of one fault type and yield one Record per injection.

    for record in run("kill9-python", size=5, workdir=tmp):
        assert record.ok, record.problems()

Injections run in sessions (one Supervisor each, at most ``session_size``
injections); after a session its leaks (processes, plugbay-* threads, open
fds, temp entries, and what the target itself may leave: a container, a
volume, a network namespace, a pod) are booked on its last record. The same
generator feeds the tests (small size) and bench/bench_faults.py (large size).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from plugbay import RestartPolicy, Supervisor
from tests.faults.injectors import FAULTS, Fault
from tests.faults.probe import (
    Caller,
    Record,
    Snapshot,
    check_writes,
    probe_until_ok,
    settled_leaks,
)
from tests.faults.targets import Target

SIZE_ENV = "PLUGBAY_FAULTS_SIZE"
DEFAULT_SIZE = 3


def size_from_env(default: int = DEFAULT_SIZE) -> int:
    """Injections per fault type: $PLUGBAY_FAULTS_SIZE (1..10000), else ``default``."""
    raw = os.environ.get(SIZE_ENV, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{SIZE_ENV}={raw!r} is not a number; set it to injections per fault type") from None
    if not 1 <= value <= 10000:
        raise ValueError(f"{SIZE_ENV}={value} is out of range; use 1..10000")
    return value


def run(fault_name: str, size: int, workdir: Path, session_size: int = 25) -> Iterator[Record]:
    if fault_name == "host-kill":
        from tests.faults.hostkill import run_host_kill

        yield from run_host_kill(size, workdir)
        return
    fault = FAULTS[fault_name]
    done = 0
    while done < size:
        n = min(session_size, size - done)
        yield from _session(fault, done, n, workdir)
        done += n


def _session(fault: Fault, first: int, count: int, workdir: Path) -> Iterator[Record]:
    before = Snapshot.take()
    records: list[Record] = []
    target_left: list[str] = []
    with fault.target(workdir) as target:
        policy = RestartPolicy(max_restarts=count * 3 + 3, window=3600, initial_backoff=0.05, max_backoff=0.5)
        with Supervisor(target.factory, restart=policy, health_interval=0.25, health_timeout=0.5,
                        unhealthy_grace=fault.unhealthy_grace, name=f"faults-{fault.name}") as sup:
            for i in range(first, first + count):
                records.append(inject_once(fault, sup, target, i))
        leftovers, infra = target.leftovers, target.infra
    target_left = _settled(leftovers)
    records[-1].leaks += settled_leaks(before, infra=infra) + target_left
    yield from records


def _settled(check: Any, wait: float = 15.0) -> list[str]:
    end = time.monotonic() + wait
    while True:
        left: list[str] = check()
        if not left or time.monotonic() >= end:
            return left
        time.sleep(0.2)


def inject_once(fault: Fault, sup: Supervisor, target: Target, index: int) -> Record:
    record = Record(fault.name, index)
    caller = Caller(sup.channel, record)
    acked: dict[str, bytes] = {}
    if not sup.wait_running(fault.budget):
        record.detail += " the Supervisor was not running before the fault;"
        return record
    key, value = f"f{index}a", os.urandom(8).hex().encode()
    ok, _ = caller.call("Put", key, value, deadline=10.0)  # an acknowledged write from before the fault
    if ok:
        acked[key] = value
    restarts = sup.restarts
    started = time.monotonic()
    heal = fault.inject(sup, target, caller)
    timer = None
    if heal is not None:
        timer = threading.Timer(fault.heal_after, heal)
        timer.name = "plugbay-faults-heal"
        timer.start()
    try:
        probe_until_ok(caller, f"f{index}", started, fault.budget, acked)
    finally:
        if timer is not None:
            timer.join(fault.heal_after + 30)
    if target.durable:
        record.lost_writes = check_writes(caller, acked)
    else:
        record.lost_writes = None
    record.restarts = sup.restarts - restarts
    return record
