"""Discovery changes under calls in flight: terminating endpoints drain, leaving ones close, unix targets.

The endpoint set is pushed by a small resolver written for the test (a real
implementation of the Resolver protocol, standing in for a discovery source
such as Kubernetes EndpointSlices); the pool and the replicas are the real ones.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

from tests.net_util import HANDSHAKE, PLUGIN_NAME, PLUGINS, REPO, Replica
from tests.resilience_util import wait_until

from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402, I001

from plugbay import PluginUnavailableError
from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.core.host.channel import ManagedChannel
from plugbay.network import connect
from plugbay.network.pool import EndpointPool
from plugbay.network.resolver import Endpoint, OnChange


class PushResolver:
    """Reports whatever set the test pushes."""

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = list(endpoints)
        self.on_change: OnChange | None = None

    def start(self, on_change: OnChange) -> None:
        self.on_change = on_change
        on_change(self.endpoints)

    def push(self, endpoints: Sequence[Endpoint]) -> None:
        assert self.on_change is not None
        self.on_change(list(endpoints))

    def close(self) -> None:
        self.on_change = None


def test_terminating_endpoints_finish_their_calls_and_get_no_new_ones() -> None:
    a, b = Replica("127.0.0.1:0"), Replica("127.0.0.1:0")
    ep_a, ep_b = Endpoint("tcp", a.address), Endpoint("tcp", b.address)
    resolver = PushResolver([ep_a, ep_b])
    pool = EndpointPool(resolver, insecure=True, policy="pick_first", health_interval=0.2, name="kv-drain")
    try:
        pool.start()
        kv = kv_pb2_grpc.KVStub(ManagedChannel(pool, 10.0, None, "kv-drain"))
        pid_a, pid_b = str(a.proc.pid).encode(), str(b.proc.pid).encode()
        assert kv.Get(kv_pb2.GetRequest(key="__pid__")).value == pid_a
        results: list[bytes] = []
        slow = threading.Thread(target=lambda: results.append(kv.Get(kv_pb2.GetRequest(key="__sleep__")).value),
                                name="plugbay-test-slow-call")
        slow.start()
        assert wait_until(lambda: pool.metrics()["endpoints"][ep_a.key]["inflight"] == 1, 5)
        resolver.push([Endpoint("tcp", a.address, terminating=True), ep_b])  # a starts to terminate
        assert [kv.Get(kv_pb2.GetRequest(key="__pid__")).value for _ in range(4)] == [pid_b] * 4
        resolver.push([ep_b])  # and leaves discovery while its call is still running
        assert pool.metrics()["draining"] == 1
        slow.join(10)
        assert results == [b"slept"]  # the call in flight finished on a
        assert wait_until(lambda: pool.metrics()["draining"] == 0, 10)  # then a's channel closed
        assert set(pool.metrics()["endpoints"]) == {ep_b.key}
        resolver.push([Endpoint("tcp", b.address, ready=False)])  # not ready: no calls until it is
        assert pool.metrics()["available"] == 0
        resolver.push([ep_b])
        assert kv.Get(kv_pb2.GetRequest(key="__pid__")).value == pid_b
    finally:
        pool.close()
        a.stop()
        b.stop()


def test_calls_cut_when_their_endpoint_left_discovery_drain_timeout_ago_fail_typed() -> None:
    # calls outlasting drain_timeout on an endpoint that left: its channel closes under them; each
    # fails as a call whose peer is gone (never grpcio's bare CANCELLED "Channel closed!"), not sent again
    rep = Replica("127.0.0.1:0")
    ep = Endpoint("tcp", rep.address)
    resolver = PushResolver([ep])
    pool = EndpointPool(resolver, insecure=True, health_interval=0.1, drain_timeout=0.3, name="kv-cut")
    try:
        pool.start()
        channel = ManagedChannel(pool, 10.0, None, "kv-cut")
        kv = kv_pb2_grpc.KVStub(channel)
        failed: list[BaseException] = []

        def blocking() -> None:
            try:
                kv.Get(kv_pb2.GetRequest(key="__sleep__"))  # 1.5 s in the plugin
            except BaseException as exc:
                failed.append(exc)

        call = threading.Thread(target=blocking, name="plugbay-test-cut-call")
        call.start()
        future = kv.Get.future(kv_pb2.GetRequest(key="__sleep__"))
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        assert wait_until(lambda: pool.metrics()["endpoints"][ep.key]["inflight"] == 3, 5)
        resolver.push([])
        call.join(10)
        with pytest.raises(PluginUnavailableError) as from_future:
            future.result(10)
        with pytest.raises(PluginUnavailableError) as from_stream:
            next(watch)
        for exc in (*failed, from_future.value, from_stream.value):
            assert isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE, repr(exc)
            assert f"endpoint {ep.key} left discovery; the call was cut after drain_timeout (0.3 s)" in str(exc)
        assert len(failed) == 1
    finally:
        pool.close()
        rep.stop()


# grpcio reads unix: targets as URIs: a '#' or '?' ended the path there, and unix:////PATH named a host
@pytest.mark.parametrize("name, slashes", [("kv.sock", "//"), ("a#b.sock", "//"), ("a?b.sock", "//"),
                                           ("kv.sock", "///")])
def test_a_unix_target_reaches_a_sidecar_socket(tmp_path: Path, name: str, slashes: str) -> None:
    path = tmp_path / name
    rep = Replica(f"unix:{path}")
    try:
        with connect(f"unix:{slashes}{path}", handshake=HANDSHAKE, plugins=PLUGINS, insecure=True,
                     start_timeout=20) as client:
            assert client.handshake.network == "unix" and client.handshake.address == str(path)
            kv = client.dispense(PLUGIN_NAME)
            kv.put("k", b"v")
            assert kv.get("k") == b"v"
    finally:
        rep.stop()


def test_cancelled_futures_end_their_calls_so_a_leaving_endpoint_closes() -> None:
    rep = Replica("127.0.0.1:0")
    ep = Endpoint("tcp", rep.address)
    resolver = PushResolver([ep])
    pool = EndpointPool(resolver, insecure=True, health_interval=0.2, drain_timeout=60.0, name="kv-cancel")
    try:
        pool.start()
        get = kv_pb2_grpc.KVStub(pool).Get
        for _ in range(3):
            future = get.future(kv_pb2.GetRequest(key="__sleep__"), timeout=30.0)
            assert wait_until(lambda: pool.metrics()["endpoints"][ep.key]["inflight"] >= 1, 5)
            assert future.cancel()
        # a cancelled call is over: it must not stay counted as in flight
        assert wait_until(lambda: pool.metrics()["endpoints"][ep.key]["inflight"] == 0, 5)
        resolver.push([])
        # nothing in flight, so it closes now, not after drain_timeout (60 s)
        assert wait_until(lambda: pool.metrics()["draining"] == 0, 5)
    finally:
        pool.close()
        rep.stop()


def test_endpoints_that_leave_leave_no_health_bookkeeping_behind(tmp_path: Path) -> None:
    # rollouts: each a fresh set of endpoints (pod IPs that never come back) whose health checks fail
    resolver = PushResolver([])
    pool = EndpointPool(resolver, insecure=True, health_interval=0.05, health_timeout=0.5, name="kv-churn")
    try:
        pool.start()
        for rollout in range(5):
            endpoints = [Endpoint("unix", str(tmp_path / f"gone-{rollout}-{i}.sock")) for i in range(4)]
            resolver.push(endpoints)
            assert wait_until(lambda: all(e["healthy"] is False for e in pool.metrics()["endpoints"].values()), 10)
            assert set(pool._health_fails) <= {e.key for e in endpoints}, len(pool._health_fails)
        resolver.push([])
        assert wait_until(lambda: pool.metrics()["draining"] == 0, 10)
        assert pool._health_fails == {}  # 20 were counted; the endpoints gone, their counts are too
    finally:
        pool.close()


class _SlowClose:
    """A drained endpoint's channel whose close() takes a while, as a brokered endpoint's does (it waits
    for its relay): every grpc.Channel call passes through to the real channel."""

    def __init__(self, channel: object) -> None:
        self._channel = channel
        self.closing = threading.Event()
        self.release = threading.Event()

    def close(self) -> None:
        self.closing.set()
        self.release.wait(20)
        getattr(self._channel, "close")()

    def __getattr__(self, name: str) -> object:
        return getattr(self._channel, name)


def test_a_slow_close_of_a_drained_endpoint_does_not_hold_up_picks() -> None:
    a, b = Replica("127.0.0.1:0"), Replica("127.0.0.1:0")
    ep_a, ep_b = Endpoint("tcp", a.address), Endpoint("tcp", b.address)
    resolver = PushResolver([ep_a, ep_b])
    pool = EndpointPool(resolver, insecure=True, policy="pick_first", health_interval=0.1, name="kv-slow-close")
    slow = None
    try:
        pool.start()
        kv = kv_pb2_grpc.KVStub(ManagedChannel(pool, 10.0, None, "kv-slow-close"))
        assert kv.Get(kv_pb2.GetRequest(key="__pid__")).value == str(a.proc.pid).encode()
        with pool._cond:
            slow = pool._members[ep_a.key].channel = _SlowClose(pool._members[ep_a.key].channel)
        resolver.push([ep_b])  # a leaves with nothing in flight: the health thread closes it next
        assert slow.closing.wait(10)
        answers: list[bytes] = []
        call = threading.Thread(target=lambda: answers.append(kv.Get(kv_pb2.GetRequest(key="__pid__")).value),
                                name="plugbay-test-pick", daemon=True)
        call.start()
        call.join(5)  # the close still runs (release is not set): a pick must not wait for it
        assert answers == [str(b.proc.pid).encode()], "a pick waited for a drained endpoint's close"
    finally:
        if slow is not None:
            slow.release.set()
        pool.close()
        a.stop()
        b.stop()


# Closes the pool in the moment between a call's pick and the building of its call object (the window a
# close from another thread can land in), for each kind of call; prints what each call raised. Run in a
# process of its own: building a call object on a closed grpcio channel crashes the process (SIGSEGV).
_CLOSE_AFTER_PICK = r"""
import sys
from tests.test_network_drain import PushResolver
from kvproto import kv_pb2, kv_pb2_grpc
from plugbay.errors import PlugbayError
from plugbay.network.pool import EndpointPool
from plugbay.network.resolver import Endpoint

address = sys.argv[1]
for kind in ("unary", "future", "stream"):
    pool = EndpointPool(PushResolver([Endpoint("tcp", address)]), insecure=True, name="kv-race")
    pool.start()
    kv = kv_pb2_grpc.KVStub(pool)
    kv.Get(kv_pb2.GetRequest(key="__pid__"), timeout=10)
    picked = pool.pick_unless  # every call's pick (a stream's own, and pool.pick's)

    def pick_then_close(*args, picked=picked, pool=pool):
        member = picked(*args)
        pool.close()
        return member

    pool.pick_unless = pick_then_close
    try:
        if kind == "unary":
            kv.Get(kv_pb2.GetRequest(key="k"), timeout=5)
        elif kind == "future":
            kv.Get.future(kv_pb2.GetRequest(key="k"), timeout=5).result()
        else:
            list(pool.unary_stream("/plugin.GRPCStdio/StreamStdio")(b"", timeout=5))
        print(kind, "answered", flush=True)
    except PlugbayError as exc:
        print(kind, "typed", type(exc).__name__, flush=True)
    except Exception as exc:
        print(kind, "untyped", type(exc).__name__, exc, flush=True)
    finally:
        pool.close()
"""


def test_a_pool_closed_between_a_pick_and_the_call_fails_the_call_typed() -> None:
    rep = Replica("127.0.0.1:0")  # here, not in the process that may crash: it is stopped whatever happens
    try:
        out = subprocess.run([sys.executable, "-c", _CLOSE_AFTER_PICK, rep.address], cwd=REPO, capture_output=True,
                             text=True, timeout=120, stdin=subprocess.DEVNULL)
    finally:
        rep.stop()
    assert out.returncode == 0, f"rc {out.returncode}: {out.stdout}{out.stderr[-2000:]}"
    lines = out.stdout.split("\n")
    for kind in ("unary", "future", "stream"):
        assert any(line.startswith(f"{kind} typed ") for line in lines), out.stdout
