"""What one injection measures: calls against their deadline, typed errors, recovery, lost writes, leaks.

Every call goes through a raw KV stub on the Supervisor's channel with an
explicit deadline, so "no call outlives its deadline by more than 100 ms" is
checked on each one. Every loop here is bounded in count and in time.
"""

from __future__ import annotations

import gc
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from kvproto import kv_pb2, kv_pb2_grpc

from plugbay import PlugbayError

OVERRUN = 0.100  # a call may end at most this long after its deadline
DEADLINE = 1.0  # each probe call's deadline (s)


@dataclass
class Record:
    """One injected fault and what followed it."""

    fault: str
    index: int
    recovered: bool = False
    recovery_s: float | None = None  # fault -> first successful call
    calls: int = 0
    hung_calls: list[str] = field(default_factory=list)  # calls that outlived their deadline by > OVERRUN
    untyped_errors: list[str] = field(default_factory=list)  # call errors that are not a PlugbayError
    non_rpc_errors: list[str] = field(default_factory=list)  # PlugbayErrors from a call that are not grpc.RpcError
    leaks: list[str] = field(default_factory=list)
    lost_writes: list[str] | None = field(default_factory=list)  # None: the target keeps no data (n/a)
    restarts: int = 0
    unexpected: list[str] = field(default_factory=list)  # outcomes the fault type rules out
    detail: str = ""

    @property
    def ok(self) -> bool:
        return (self.recovered and not self.hung_calls and not self.untyped_errors and not self.leaks
                and not self.lost_writes and not self.unexpected)

    def problems(self) -> str:
        return (f"{self.fault}#{self.index}: recovered={self.recovered} hung={self.hung_calls}"
                f" unexpected={self.unexpected} untyped={self.untyped_errors} non-rpc={self.non_rpc_errors[:2]}"
                f" leaks={self.leaks} lost={self.lost_writes} {self.detail}")


class Caller:
    """Makes KV calls with a deadline and books every outcome into a Record."""

    def __init__(self, channel: grpc.Channel, record: Record) -> None:
        self.stub = kv_pb2_grpc.KVStub(channel)
        self.record = record
        self.lock = threading.Lock()

    def call(self, method: str, key: str, value: bytes = b"", deadline: float = DEADLINE) -> tuple[bool, Any]:
        """(True, result) or (False, the exception); never raises."""
        started = time.monotonic()
        try:
            if method == "Put":
                result: Any = self.stub.Put(kv_pb2.PutRequest(key=key, value=value), timeout=deadline)
            else:
                result = self.stub.Get(kv_pb2.GetRequest(key=key), timeout=deadline).value
            ok = True
        except Exception as exc:  # noqa: BLE001 - every exception is judged below
            result, ok = exc, False
        took = time.monotonic() - started
        with self.lock:
            self.record.calls += 1
            if took > deadline + OVERRUN:
                self.record.hung_calls.append(f"{method}({key}) took {took:.3f}s for a {deadline}s deadline")
            if not ok:
                text = f"{method}({key}): {type(result).__module__}.{type(result).__name__}: {str(result)[:160]}"
                if not isinstance(result, PlugbayError):
                    self.record.untyped_errors.append(text)
                elif not isinstance(result, grpc.RpcError):
                    self.record.non_rpc_errors.append(text)
        return ok, result


def probe_until_ok(caller: Caller, prefix: str, since: float, budget: float,
                   acked: dict[str, bytes]) -> None:
    """Put fresh keys until one succeeds (bounded by ``budget`` seconds and 2000 calls)."""
    end = time.monotonic() + budget
    for n in range(2000):
        if time.monotonic() >= end:
            break
        key, value = f"{prefix}p{n}", os.urandom(8).hex().encode()
        ok, _ = caller.call("Put", key, value)
        if ok:
            acked[key] = value
            caller.record.recovered = True
            caller.record.recovery_s = time.monotonic() - since
            return
        time.sleep(0.02)
    caller.record.detail += f" no call succeeded within {budget:.0f}s;"


def check_writes(caller: Caller, acked: dict[str, bytes], budget: float = 15.0) -> list[str]:
    """Keys whose acknowledged value cannot be read back (retried within ``budget``)."""
    lost: list[str] = []
    end = time.monotonic() + budget
    for key, value in acked.items():
        got: Any = None
        while True:
            ok, got = caller.call("Get", key)
            if ok or time.monotonic() >= end:
                break
            code = got.code() if isinstance(got, grpc.RpcError) else None
            if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, None):
                break  # an answer (e.g. the file is missing): no point asking again
            time.sleep(0.05)
        if got != value:
            lost.append(f"{key}: {'missing' if not isinstance(got, bytes) else 'changed'}"
                        f" ({type(got).__name__ if not isinstance(got, bytes) else got[:16]!r})")
    return lost


# --- leaks ---------------------------------------------------------------------------------


def descendants(root: int) -> set[tuple[int, str]]:
    from tests import procs

    return set(procs.descendants(root))


def _fds() -> dict[str, str]:
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass  # closed while listing (the listing's own fd, for one)
    return out


@dataclass
class Snapshot:
    procs: set[tuple[int, str]]
    threads: set[str]
    fds: dict[str, str]  # fd -> what it points at
    tmp: set[str]

    @classmethod
    def take(cls) -> Snapshot:
        gc.collect()  # a socket object nothing refers to any more is closed by the collector
        tmp = tempfile.gettempdir()
        try:
            entries = set(os.listdir(tmp))
        except OSError:
            entries = set()
        threads = {t.name for t in threading.enumerate()  # plugbay-spawn lives for the process by design
                   if t.name.startswith("plugbay-") and t.name != "plugbay-spawn" and t.is_alive()}
        return cls(descendants(os.getpid()), threads, _fds(), entries)

    def leaks_since(self, before: Snapshot, infra: bool = False) -> list[str]:
        """What is here now and was not before. ``infra``: an in-process Kubernetes stand-in runs
        (test infrastructure): skip its plugbay-standin-* threads and count no sockets, since its
        own (to the Docker engine, to the client) cannot be told apart from the client's here;
        processes, non-socket fds, temp entries and the target's pods are still checked."""
        out = [f"process {pid} ({name})" for pid, name in sorted(self.procs - before.procs)]
        out += [f"thread {name}" for name in sorted(self.threads - before.threads)
                if not (infra and name.startswith("plugbay-standin-"))]
        fds, old = self.fds, before.fds
        if infra:
            fds = {k: v for k, v in fds.items() if not v.startswith("socket:")}
            old = {k: v for k, v in old.items() if not v.startswith("socket:")}
        if len(fds) > len(old):
            new = sorted(set(fds.values()) - set(old.values())) or sorted(fds.values())
            out.append(f"{len(fds) - len(old)} more open fds ({len(old)} -> {len(fds)};"
                       f" new: {', '.join(new[:5])})")
        out += [f"temp entry {name}" for name in sorted(self.tmp - before.tmp) if not name.startswith("pytest-")]
        return out


def settled_leaks(before: Snapshot, extra: Callable[[], list[str]] = list, wait: float = 10.0,
                  infra: bool = False) -> list[str]:
    """Leaks now, re-checked until they are gone or ``wait`` passes (killed things take a moment)."""
    end = time.monotonic() + wait
    while True:
        leaks = Snapshot.take().leaks_since(before, infra) + extra()
        if not leaks or time.monotonic() >= end:
            return leaks
        time.sleep(0.2)
