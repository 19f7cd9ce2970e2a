"""The gateway's shared go-plugin 1.0.1 child stops answering (SIGSTOP: wedged, as a deadlocked plugin)
without exiting. Its health said SERVING for as long as that lasted, so hosts kept the gateway in rotation
while every forwarded call waited for its deadline; now the gateway's own health checks of the child
turn it NOT_SERVING, and SERVING again once the child answers (it is not restarted)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.network.gateway import Gateway
from tests import netcerts
from tests.test_gateway import certs, config, kv_bin, pytestmark, secure  # noqa: F401 (fixtures, marks)
from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402 (on the path test_gateway sets)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _until(health: health_pb2_grpc.HealthStub, status: int, within: float) -> float:
    """Seconds until the gateway's health for "plugin" is ``status``; AssertionError after ``within``."""
    started = time.monotonic()
    seen = []
    while time.monotonic() - started < within:
        seen.append(health.Check(health_pb2.HealthCheckRequest(service="plugin"), timeout=5).status)
        if seen[-1] == status:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"the gateway's health was not {status} within {within}s: {sorted(set(seen))}")


def test_a_stopped_child_turns_health_not_serving_and_serving_again_when_it_answers(
        kv_bin: str, certs: netcerts.CertSet, in_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    caplog.set_level("INFO", logger="plugbay.gateway")
    with Gateway(config(kv_bin, certs, keepalive=(0.5, 1.0))) as gw, secure(certs, gw.address) as ch:
        kv = kv_pb2_grpc.KVStub(ch)
        health = health_pb2_grpc.HealthStub(ch)  # type: ignore[no-untyped-call]
        kv.Put(kv_pb2.PutRequest(key="k", value=b"v"), timeout=10)
        time.sleep(2.0)  # a few answered checks first: a child that answers stays SERVING
        assert health.Check(health_pb2.HealthCheckRequest(service="plugin"), timeout=5).status == SERVING
        pid = gw.child_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            # two misses of 1 s after at most 0.5 s, on 0.2 s polls: about 3 s
            _until(health, NOT_SERVING, within=15)
            assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == NOT_SERVING
            assert gw.child_pid == pid and gw.keeper.restarts == 0  # slow or stopped, it is not killed
        finally:
            os.kill(pid, signal.SIGCONT)
        _until(health, SERVING, within=15)
        assert kv.Get(kv_pb2.GetRequest(key="k"), timeout=10).value == b"v"
        assert gw.child_pid == pid and gw.keeper.restarts == 0
        time.sleep(1.5)  # answered checks since: no further change
        assert health.Check(health_pb2.HealthCheckRequest(service="plugin"), timeout=5).status == SERVING
    changes = [r.getMessage() for r in caplog.records if "health check" in r.getMessage()]
    assert len(changes) == 2 and "did not answer" in changes[0] and "again" in changes[1], changes


def test_a_keepalive_timeout_without_limit_keeps_a_healthy_child_serving(
        kv_bin: str, certs: netcerts.CertSet, in_tmp: Path) -> None:  # noqa: F811
    """TIMEOUT inf (accepted: "no limit") went to the checks as their deadline, which grpcio fails at once:
    a working child counted as not answering, and the gateway said NOT_SERVING for good."""
    with Gateway(config(kv_bin, certs, keepalive=(0.3, float("inf")))) as gw, secure(certs, gw.address) as ch:
        health = health_pb2_grpc.HealthStub(ch)  # type: ignore[no-untyped-call]
        deadline = time.monotonic() + 3.0  # ten check intervals
        while time.monotonic() < deadline:
            assert health.Check(health_pb2.HealthCheckRequest(service="plugin"), timeout=5).status == SERVING
            time.sleep(0.2)
