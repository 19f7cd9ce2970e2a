"""The gateway's shared go-plugin 1.0.1 child stops answering (SIGSTOP: wedged, as a deadlocked plugin)
without exiting. Its health said SERVING for as long as that lasted, so hosts kept the gateway in rotation
while every forwarded call waited for its deadline; now the gateway's own health checks of the child
turn it NOT_SERVING, and SERVING again once the child answers (it is not restarted)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import grpc

from plugbay import RemoteClient, RemoteConfig
from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.core.resilience.restart import RestartPolicy
from plugbay.network import NetworkTLS
from plugbay.network.gateway import Gateway
from plugbay.network.gateway.forward import _forwardable, _forwardable_trailer
from plugbay.network.poolcalls import NOT_SENT, not_sent
from tests import netcerts
from tests.net_util import HANDSHAKE, PLUGIN_NAME, PLUGINS
from tests.test_gateway import certs, config, kv_bin, pytestmark, secure  # noqa: F401 (fixtures, marks)
from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402 (on the path test_gateway sets)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CALL_TIMEOUT = 30.0  # the pool's, over a refusing gateway and a working one


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


def test_while_the_child_misses_its_checks_new_calls_are_refused_at_once_and_flow_again_after(
        kv_bin: str, certs: netcerts.CertSet, in_tmp: Path) -> None:  # noqa: F811
    """A NOT_SERVING gateway still sent new calls to its wedged child, each waiting out its deadline (or for
    ever without one); now they are refused at once, UNAVAILABLE, marked for pools as never sent."""
    with Gateway(config(kv_bin, certs, keepalive=(0.5, 1.0))) as gw, secure(certs, gw.address) as ch:
        kv = kv_pb2_grpc.KVStub(ch)
        health = health_pb2_grpc.HealthStub(ch)  # type: ignore[no-untyped-call]
        kv.Put(kv_pb2.PutRequest(key="k", value=b"v"), timeout=10)
        pid = gw.child_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            # forwarded before the checks were missed: it waits for the child, and is not refused or cut
            early = kv.Get.future(kv_pb2.GetRequest(key="k"), timeout=60)
            _until(health, NOT_SERVING, within=15)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as refused:
                kv.Get(kv_pb2.GetRequest(key="k"), timeout=30, metadata=(("plugbay-not-sent", "tok"),))
            # sent to the wedged child it would wait out its 30 s deadline: half of that is a margin no load
            # reaches (the code below tells the two apart too: DEADLINE_EXCEEDED there)
            assert time.monotonic() - started < 15, "the call went to the wedged child"
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "missed its health checks" in str(refused.value.details())
            assert "did not send it this call" in str(refused.value.details())
            # the mark echoes the call's token (a pool's): a call that carried none gets none
            assert ("plugbay-not-sent", "tok") in tuple(refused.value.trailing_metadata())
            with pytest.raises(grpc.RpcError) as unmarked:
                kv.Get(kv_pb2.GetRequest(key="k"), timeout=30)
            assert unmarked.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "plugbay-not-sent" not in dict(unmarked.value.trailing_metadata())
            assert not early.done()
        finally:
            os.kill(pid, signal.SIGCONT)
        assert early.result(timeout=30).value == b"v"
        _until(health, SERVING, within=15)
        assert kv.Get(kv_pb2.GetRequest(key="k"), timeout=10).value == b"v"
        assert gw.child_pid == pid and gw.keeper.restarts == 0


@contextmanager
def _pool_of(refusing: Gateway, fine: Gateway, certs: netcerts.CertSet) -> Iterator[tuple[RemoteClient, Any]]:
    """A RemoteClient over both gateways that checks health only hourly (so it never ejects the refusing
    one by health), and its kv stub, one Put already done (both children share the working folder)."""
    tls_dir = certs.dir
    (tls_dir / "client.crt").write_bytes(certs.client.cert_pem)
    (tls_dir / "client.key").write_bytes(certs.client.key_pem)
    (tls_dir / "server-ca.crt").write_bytes(certs.server_ca.cert_pem)
    tls = NetworkTLS(str(tls_dir / "client.crt"), str(tls_dir / "client.key"), str(tls_dir / "server-ca.crt"),
                     server_name="localhost")
    cfg = RemoteConfig(target=f"static:///{refusing.address},{fine.address}", handshake=HANDSHAKE,
                       plugins=PLUGINS, tls=tls, call_timeout=CALL_TIMEOUT, health_interval=3600.0, name="kv-gateways")
    with RemoteClient(cfg) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        yield client, kv


def _gets_go_to(client: RemoteClient, kv: Any, fine: Gateway) -> None:
    """Four Gets (round robin picks the refusing gateway too) are answered by the other one at once."""
    started = time.monotonic()
    for _ in range(4):
        assert kv.get("k") == b"v"
    # one that waited for the refusing gateway's child would wait out the pool's call_timeout (30 s): half
    # of that is a margin no load reaches
    assert time.monotonic() - started < CALL_TIMEOUT / 2, "a call waited for the refusing gateway's child"
    snap = client.metrics()
    assert snap["resends"] >= 1, snap
    assert snap["endpoints"][f"tcp:{fine.address}"]["picks"] >= 4, snap


def test_a_pool_sends_the_call_a_wedged_gateway_refuses_to_the_other_gateway(
        kv_bin: str, certs: netcerts.CertSet, in_tmp: Path) -> None:  # noqa: F811
    """Before the pool's next health check sees the wedged gateway NOT_SERVING (here: not for an hour), the
    calls it picks for it must not wait out their deadline: the refusal says they were never sent."""
    with Gateway(config(kv_bin, certs, keepalive=(0.5, 1.0))) as wedged, \
            Gateway(config(kv_bin, certs, keepalive=(0.5, 1.0))) as fine, secure(certs, wedged.address) as ch, \
            _pool_of(wedged, fine, certs) as (client, kv):
        pid = wedged.child_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            _until(health_pb2_grpc.HealthStub(ch), NOT_SERVING, within=15)  # type: ignore[no-untyped-call]
            _gets_go_to(client, kv, fine)
        finally:
            os.kill(pid, signal.SIGCONT)


def test_a_pool_sends_the_call_a_restarting_gateway_refuses_to_the_other_gateway(
        kv_bin: str, certs: netcerts.CertSet, in_tmp: Path) -> None:  # noqa: F811
    """A gateway whose child exited and waits to restart it refuses calls "not running": never sent, so
    the pool sends them to the other gateway rather than failing them."""
    slow = RestartPolicy(max_restarts=10, window=60.0, initial_backoff=60.0, max_backoff=60.0)
    with Gateway(config(kv_bin, certs, restart=slow)) as restarting, Gateway(config(kv_bin, certs)) as fine, \
            secure(certs, restarting.address) as ch, _pool_of(restarting, fine, certs) as (client, kv):
        pid = restarting.child_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        direct = kv_pb2_grpc.KVStub(ch)  # type: ignore[no-untyped-call]
        deadline = time.monotonic() + 15
        while True:  # until the keeper has seen the exit (it then waits a minute to restart)
            try:
                direct.Get(kv_pb2.GetRequest(key="k"), timeout=5, metadata=((NOT_SENT, "tok"),))
            except grpc.RpcError as exc:
                if "not running" in str(exc.details()):
                    assert (NOT_SENT, "tok") in tuple(exc.trailing_metadata() or ()), exc.trailing_metadata()
                    break
            assert time.monotonic() < deadline, "the gateway did not see its child exit"
            time.sleep(0.1)
        _gets_go_to(client, kv, fine)


class _Refused(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, trailers: tuple[tuple[str, str | bytes], ...]) -> None:
        self._code, self._trailers = code, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "refused"

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailers


def test_only_the_gateway_marks_a_call_never_sent() -> None:
    """The child's own metadata never carries the mark through (it could mark a call it ran) nor sees the
    caller's token (the key is dropped from invocation metadata too); the pool takes the mark only with
    UNAVAILABLE and only when it echoes its own token (tests/test_network_not_sent.py: end to end)."""
    assert not _forwardable(NOT_SENT) and not _forwardable_trailer(NOT_SENT)
    token = "a" * 32
    assert not_sent(_Refused(grpc.StatusCode.UNAVAILABLE, ((NOT_SENT, token),)), None, token)
    assert not not_sent(_Refused(grpc.StatusCode.INTERNAL, ((NOT_SENT, token),)), None, token)
    assert not not_sent(_Refused(grpc.StatusCode.UNAVAILABLE, (("other", token),)), None, token)
    for forged in ("", "1", "b" * 32, token.encode()):
        assert not not_sent(_Refused(grpc.StatusCode.UNAVAILABLE, ((NOT_SENT, forged),)), None, token), forged
