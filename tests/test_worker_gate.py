"""The plugin's handler pool cannot starve plugbay's own services.

Real trap_kv plugins (plugbay.serve) get calls whose handlers outlive the
host's deadline; health, a refused extra call and GRPCController.Shutdown must
all still answer.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import CallTimeoutError, Client, ClientConfig  # noqa: E402
from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from plugbay._proto.plugin import grpc_controller_pb2, grpc_controller_pb2_grpc  # noqa: E402

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
        refused = sum(_refused(r) for r in results)
        assert timeouts + refused == 3 * pool and pool <= timeouts <= 2 * pool and refused >= pool, results
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
