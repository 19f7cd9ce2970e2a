"""The plugin's handler pool cannot starve plugbay's own services.

Real trap_kv plugins (plugbay.serve) get calls whose handlers outlive the
host's deadline; health, a refused extra call and GRPCController.Shutdown must
all still answer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402
from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402

from plugbay import CallTimeoutError, Client, ClientConfig  # noqa: E402
from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from plugbay._proto.plugin import grpc_controller_pb2, grpc_controller_pb2_grpc  # noqa: E402
from plugbay.core.protocol.notsent import NOT_SENT  # noqa: E402
from tests.resilience_util import wait_until  # noqa: E402

PY = sys.executable
TRAP = str(REPO / "tests" / "plugins" / "trap_kv.py")
PLUGINS = {PLUGIN_NAME: KVPlugin(None)}  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _in_tmp(in_tmp: None) -> None:
    """The KV plugin writes its files in the working folder."""


def _stick(kv: object, count: int) -> list[BaseException | None]:
    """``count`` concurrent Get("__hang__") calls; every one ends (deadline or refusal)."""
    results: list[BaseException | None] = [None] * count

    def call(i: int) -> None:
        try:
            kv.get("__hang__")  # type: ignore[attr-defined]
        except BaseException as exc:  # noqa: BLE001 - collected for the assertions
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,), name=f"plugbay-test-stick-{i}") for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    return results


def _refused(exc: BaseException | None) -> bool:
    return (isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            and "ServeConfig.max_workers" in str(exc.details()))


def _health_and_shutdown_answer(client: Client) -> None:
    health = health_pb2_grpc.HealthStub(client.channel)  # type: ignore[no-untyped-call]
    answer = health.Check(health_pb2.HealthCheckRequest(service="plugin"), timeout=20)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    controller = grpc_controller_pb2_grpc.GRPCControllerStub(client.channel)  # type: ignore[no-untyped-call]
    controller.Shutdown(grpc_controller_pb2.Empty(), timeout=20)


def test_stuck_handlers_leave_health_and_shutdown_answering() -> None:
    pool = 3
    with Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=[PY, TRAP], env={"TRAP_WORKERS": str(pool)},
                             call_timeout=3.0, kill_grace=0.5)) as client:
        kv = client.dispense(PLUGIN_NAME)
        results = _stick(kv, 3 * pool)
        # the pool's worth of calls hit their deadline while their handlers run on; as many more waited
        # for a slot (until their deadline, or refused just before it); the rest were refused at once
        # instead of queueing behind them
        timeouts = sum(isinstance(r, CallTimeoutError) for r in results)
        waited = sum(_refused(r) and "this call waited" in str(r.details()) for r in results)  # type: ignore[union-attr]
        at_once = sum(_refused(r) and "wait for a slot already" in str(r.details()) for r in results)  # type: ignore[union-attr]
        assert at_once == pool and timeouts + waited == 2 * pool and timeouts >= pool, results
        with pytest.raises((grpc.RpcError, CallTimeoutError)) as info:
            kv.put("more", b"x")
        assert isinstance(info.value, CallTimeoutError) or _refused(info.value)
        _health_and_shutdown_answer(client)


def test_the_default_runs_what_a_go_plugin_would() -> None:
    """40 calls held open (a watch-style plugin's streams): the old default (32) refused 8 of them, and
    any further call; a Go plugin has no cap."""
    with Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=[PY, TRAP],
                             call_timeout=3.0, kill_grace=0.5)) as client:
        kv = client.dispense(PLUGIN_NAME)
        results = _stick(kv, 40)
        assert all(isinstance(r, CallTimeoutError) for r in results), results
        kv.put("more", b"x")
        assert kv.get("more") == b"x"
        _health_and_shutdown_answer(client)


def test_calls_past_max_workers_wait_for_a_slot() -> None:
    """A Go host does not retry RESOURCE_EXHAUSTED: short calls past the limit wait for a slot."""
    with Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=[PY, TRAP], env={"TRAP_WORKERS": "2"},
                             call_timeout=60.0, kill_grace=0.5)) as client:
        kv = client.dispense(PLUGIN_NAME)
        answers: list[object] = []
        threads = [threading.Thread(target=lambda: answers.append(_try(kv.get, "__nap__")),
                                    name=f"plugbay-test-nap-{i}") for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert answers == [b"rested"] * 4


def _try(call: object, *args: object) -> object:
    try:
        return call(*args)  # type: ignore[operator]
    except BaseException as exc:  # noqa: BLE001 - collected for the assertion
        return exc


def test_bad_max_workers_stops_the_plugin_with_a_message(tmp_path: Path) -> None:
    env = {"BASIC_PLUGIN": "hello", "PLUGIN_PROTOCOL_VERSIONS": "1", "TRAP_WORKERS": "zero"}
    proc = subprocess.run([PY, TRAP], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 1
    assert "ServeConfig.max_workers must be a positive int" in proc.stderr and "'zero'" in proc.stderr


def _held(env: dict[str, str]) -> Client:
    """A trap_kv with one slot, a call may wait 60 s for it (a waiting call's fate never hangs on the wait's
    end), the pool's idle threads leaving fast."""
    return Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=[PY, TRAP], call_timeout=60.0,
                               kill_grace=0.5, env={"TRAP_WORKERS": "1", "TRAP_SLOT_WAIT": "60", **env}))


@contextmanager
def _slot_held(tmp_path: Path, wait: str = "60") -> Iterator[tuple[Client, kv_pb2_grpc.KVStub, Any]]:
    """A _held() plugin whose one slot a Get of __held__ holds (until a "release" file appears); a call
    waits ``wait`` seconds for it at most."""
    mark = tmp_path / "held-mark"
    with _held({"TRAP_HANG_MARK": str(mark), "TRAP_SLOT_WAIT": wait}) as client:
        client.dispense(PLUGIN_NAME)
        stub = kv_pb2_grpc.KVStub(client.channel)  # type: ignore[no-untyped-call]
        held = stub.Get.future(kv_pb2.GetRequest(key="__held__"))
        assert wait_until(mark.exists, 30)
        yield client, stub, held


def _room_to_wait(stub: kv_pb2_grpc.KVStub) -> bool:
    """Whether a call may wait for the one slot now (else one waits already: refused at once).

    Told by the refusal's words, not its code: a call that waited to its deadline ends DEADLINE_EXCEEDED
    or RESOURCE_EXHAUSTED, whichever reaches the host first, its own deadline or the plugin's refusal as
    its wait ends (on a quiet machine mostly the refusal, for tens of seconds on end)."""
    try:
        stub.Get(kv_pb2.GetRequest(key="__nap__"), timeout=0.3)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return True  # it waited
        assert _refused(exc), exc
        details = str(exc.details())
        assert ("wait for a slot already" in details) != ("this call waited" in details), details
        return "this call waited" in details
    raise AssertionError("the slot was free")


def _waiting_put(stub: kv_pb2_grpc.KVStub, key: str, **kw: object) -> grpc.Future:
    """A Put waiting for the slot __held__ holds: once none may wait beside it."""
    for _ in range(20):
        put = stub.Put.future(kv_pb2.PutRequest(key=key, value=b"late"), **kw)
        if not _room_to_wait(stub) and not put.done():
            return put
        put.cancel()  # a probe took the place first: this one was refused at once
    raise AssertionError("no Put waited for the slot")


def test_a_call_cancelled_while_it_waits_never_runs(tmp_path: Path) -> None:
    """A waiting Put whose caller cancelled ran once the slot freed (its write came after the host was
    told CANCELLED), and kept its place to wait meanwhile."""
    with _slot_held(tmp_path) as (_, stub, held):
        late = _waiting_put(stub, "late")
        late.cancel()
        assert wait_until(lambda: _room_to_wait(stub), 30)  # the cancelled call left its place at once
        Path("release").touch()
        assert held.result(timeout=30).value == b"released"
        assert stub.Get(kv_pb2.GetRequest(key="__nap__"), timeout=30).value == b"rested"
        assert not Path("kv_late").exists()


def test_a_call_that_waited_out_its_wait_is_told_from_one_refused_at_once(tmp_path: Path) -> None:
    """Both are refused RESOURCE_EXHAUSTED: only the words tell them apart (_room_to_wait reads them). Read
    by its code, a probe that had waited counted as one refused at once whenever the plugin's refusal
    beat the host's own deadline: the cancelled-while-waiting test above then saw no room for 30 s, a
    cancelled call seemingly keeping its place. Here the wait (0.05 s) ends well before the deadline."""
    with _slot_held(tmp_path, wait="0.05") as (_, stub, held):
        assert all(_room_to_wait(stub) for _ in range(3))
        Path("release").touch()
        assert held.result(timeout=30).value == b"released"


def test_a_waiting_call_is_refused_unsent_when_the_plugin_stops(tmp_path: Path) -> None:
    """After Shutdown a waiting Put started once the slot freed, and the exit cut it off mid-run; it is
    refused instead, marked not sent (safe to resend)."""
    with _slot_held(tmp_path) as (client, stub, held):
        late = _waiting_put(stub, "late", metadata=((NOT_SENT, "pool-token"),))
        controller = grpc_controller_pb2_grpc.GRPCControllerStub(client.channel)  # type: ignore[no-untyped-call]
        controller.Shutdown(grpc_controller_pb2.Empty(), timeout=20)
        try:
            error = late.exception(timeout=30)  # refused before the slot frees
        finally:
            Path("release").touch()
        assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.UNAVAILABLE, error
        assert (NOT_SENT, "pool-token") in tuple(late.trailing_metadata() or ()), late.trailing_metadata()
        assert "stopping" in str(error.details())
        held.exception(timeout=30)
        assert not Path("kv_late").exists()


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_threads_a_burst_started_leave_when_idle() -> None:
    """Calls waiting for a slot take threads of their own: after a 300-call burst an idle plugin kept
    269 threads (10 before), for good."""
    with Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=[PY, TRAP], call_timeout=60.0,
                             kill_grace=0.5, env={"TRAP_WORKERS": "16", "TRAP_POOL_IDLE": "0.2"})) as client:
        kv = client.dispense(PLUGIN_NAME)
        assert kv.get("__nap__") == b"rested"
        pid = client.runner.pid
        assert pid is not None
        before = _threads(pid)
        results = _stick_with(kv, "__nap__", 40)
        assert results.count(b"rested") >= 32, results  # 16 ran, 16 waited; the rest may be refused
        assert wait_until(lambda: _threads(pid) <= before + 2, 30), (before, _threads(pid))
        assert kv.get("__nap__") == b"rested"


def _stick_with(kv: object, key: str, count: int) -> list[object]:
    answers: list[object] = []
    threads = [threading.Thread(target=lambda: answers.append(_try(kv.get, key)),  # type: ignore[attr-defined]
                                name=f"plugbay-test-burst-{i}") for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    return answers
