"""The endpoint pool against real KV replicas on loopback: spreading, kill -9, resends, ejection, return.

Replicas are tests/plugins/net_kv.py processes (KV + health + Discovery) on
127.0.0.1. Every request loop is bounded in count; no timing assertions
beyond "no call outlives its deadline (+ slack)".
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from tests.net_util import HANDSHAKE, PLUGIN_NAME, PLUGINS, Replica, connection_lost, first_check_passed
from tests.ports import HeldPort
from tests.resilience_util import wait_until

from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402, I001

from plugbay import ClientStateError, ConfigError, NoEndpointsError, OutlierPolicy, RemoteClient, RemoteConfig
from plugbay.network import connect

FAST_RECONNECT = (("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 300),
                  ("grpc.min_reconnect_backoff_ms", 100))
SLACK = 1.5  # a deadline is checked, not a speed: room for a loaded 2-core CI machine


@pytest.fixture()
def replicas() -> Iterator[Callable[..., Replica]]:
    started: list[Replica] = []

    def start(listen: str = "127.0.0.1:0", **kw: Any) -> Replica:
        replica = Replica(listen, **kw)
        started.append(replica)
        return replica

    try:
        yield start
    finally:
        for replica in started:
            replica.stop()


def remote(target: str, **kw: Any) -> RemoteConfig:
    kw.setdefault("call_timeout", 2.0)
    kw.setdefault("health_interval", 0.2)
    kw.setdefault("health_timeout", 0.5)
    return RemoteConfig(target=target, handshake=HANDSHAKE, plugins=PLUGINS, insecure=True,
                        grpc_options=FAST_RECONNECT, name="kv-net", **kw)


def timed(kv: Any, key: str, timeout: float) -> tuple[bytes | BaseException, float]:
    started = time.monotonic()
    try:
        result: bytes | BaseException = kv.get(key)
    except Exception as exc:
        result = exc
    return result, time.monotonic() - started


def test_round_robin_spreads_calls_and_metrics_count_picks(replicas: Callable[..., Replica]) -> None:
    reps = [replicas() for _ in range(3)]
    target = "static:///" + ",".join(r.address for r in reps)
    with RemoteClient(remote(target)) as client:
        assert client.negotiated_version == 1
        assert client.handshake.extra["server"] == "plugbay-test/net_kv"
        kv = client.dispense(PLUGIN_NAME)
        first_check_passed(client, *(f"tcp:{r.address}" for r in reps))  # else the first calls skip one
        pids = Counter(kv.get("__pid__") for _ in range(30))
        assert set(pids) == {str(r.proc.pid).encode() for r in reps}
        assert all(n == 10 for n in pids.values()), pids
        snap = client.metrics()
        assert (snap["known"], snap["ejected"]) == (3, 0)
        assert sum(e["picks"] for e in snap["endpoints"].values()) >= 30


def test_pick_first_sticks_to_the_first_endpoint(replicas: Callable[..., Replica]) -> None:
    a, b = replicas(), replicas()
    with connect(f"static:///{a.address},{b.address}", handshake=HANDSHAKE, plugins=PLUGINS, insecure=True,
                 policy="pick_first", name="kv-first") as client:
        kv = client.dispense(PLUGIN_NAME)
        assert {kv.get("__pid__") for _ in range(10)} == {str(a.proc.pid).encode()}


def test_kill_9_calls_go_on_the_dead_endpoint_is_ejected_and_returns_when_restarted(
        replicas: Callable[..., Replica], caplog: pytest.LogCaptureFixture,
        hold_port: Callable[[int], HeldPort]) -> None:
    a, b = replicas(), replicas()
    port = a.port
    outlier = OutlierPolicy(consecutive_failures=3, base_ejection_time=1.0, max_ejection_time=5.0)
    caplog.set_level(logging.INFO, logger="plugbay.network")
    key = f"tcp:{a.address}"
    with RemoteClient(remote(f"static:///{a.address},{b.address}", outlier=outlier)) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        assert wait_until(lambda: all(e["healthy"] for e in client.metrics()["endpoints"].values()), 10)
        # the calls, not a health check, must find the death first (two failed checks left the endpoint out
        # before any call could fail on it, a rare race under load when the calls came late): the killed
        # endpoint's checks are held back until the calls have met it
        pool, holding = client.pool, threading.Event()
        real_check = pool._check

        def check(member: Any) -> None:
            if not (holding.is_set() and member.key == key):
                real_check(member)

        holding.set()
        pool._check = check  # type: ignore[method-assign]
        try:
            # and none in flight: one that failed before (a timeout under load) and one failing now would be two
            assert wait_until(lambda: not pool.member(key).checking, 10)
            assert client.metrics()["endpoints"][key]["healthy"] is True
            a.kill9()
            down = hold_port(port)  # refusing while it is down: nothing else takes its port
            # A call made before the host's connection saw the dead peer's close is written to that connection
            # and breaks in flight ("Stream removed"): the host cannot tell it from a call the plugin received,
            # so the pool does not resend it. Once the close is seen, every call is resent to the live replica.
            connection_lost(client, key)
            results = []
            for _ in range(20):  # calls go on at the live replica, none waits long
                result, took = timed(kv, "__pid__", 2.0)
                results.append(result)
                assert took < 2.0 + SLACK
            assert results == [str(b.proc.pid).encode()] * len(results), results
            snap = client.metrics()  # the calls alone found the death: they were resent, and ejected it
            assert snap["endpoints"][key]["healthy"] is True, snap["endpoints"][key]
            assert snap["endpoints"][key]["ejections"] >= 1 and snap["resends"] >= 1, snap
        finally:
            holding.clear()  # its health checks go on: they find it dead, and later back
            del pool._check
        assert wait_until(lambda: client.metrics()["endpoints"][key]["healthy"] is False, 10)
        # logged by the health thread just after it marks the endpoint (outside its lock)
        assert wait_until(lambda: "ejected endpoint " + key in caplog.text, 10), caplog.text
        assert wait_until(lambda: "2 endpoint(s) known, 1 healthy" in caplog.text, 10), caplog.text
        down.release()
        back = replicas(f"127.0.0.1:{port}")  # the replica heals (restarted on its port)
        assert wait_until(lambda: client.metrics()["endpoints"][key]["healthy"] is True
                          and not client.metrics()["endpoints"][key]["ejected"], 15), client.metrics()
        pids = {kv.get("__pid__") for _ in range(10)}
        assert str(back.proc.pid).encode() in pids


def test_calls_wait_for_an_endpoint_within_their_deadline_then_fail_typed(
        replicas: Callable[..., Replica], hold_port: Callable[[int], HeldPort]) -> None:
    a = replicas()
    port = a.port
    with RemoteClient(remote(f"static:///{a.address}")) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        a.kill9()
        down = hold_port(port)  # refusing while it is down: nothing else takes its port
        connection_lost(client, f"tcp:{a.address}")  # else the call may break in flight, possibly received
        started = time.monotonic()
        with pytest.raises(NoEndpointsError) as err:
            kv.get("k")
        took = time.monotonic() - started
        assert took < 2.0 + SLACK
        assert "no endpoint of remote plugin 'kv-net' could take the call" in str(err.value)
        assert "Check that replicas are running" in str(err.value)
        down.release()
        replicas(f"127.0.0.1:{port}")  # comes back: a call waiting within its deadline gets through
        result, took = timed(kv, "__pid__", 2.0)
        deadline = time.monotonic() + 15
        while isinstance(result, Exception) and time.monotonic() < deadline:
            result, took = timed(kv, "__pid__", 2.0)
        assert isinstance(result, bytes), result
        assert took < 2.0 + SLACK


def test_an_application_error_does_not_eject(replicas: Callable[..., Replica]) -> None:
    a, b = replicas(), replicas()
    outlier = OutlierPolicy(consecutive_failures=2, base_ejection_time=5.0)
    with RemoteClient(remote(f"static:///{a.address},{b.address}", outlier=outlier)) as client:
        kv = client.dispense(PLUGIN_NAME)
        for _ in range(5):
            with pytest.raises(Exception) as err:
                kv.get("missing")
            assert err.value.code().name == "NOT_FOUND"  # type: ignore[attr-defined]
        # UNKNOWN: a handler's exception here, what a go-plugin Go plugin answers for any plain Go error
        for _ in range(6):
            with pytest.raises(Exception) as err:
                kv.get("__raise__")
            assert err.value.code().name == "UNKNOWN"  # type: ignore[attr-defined]
        snap = client.metrics()
        assert snap["ejections"] == 0 and snap["resends"] == 0, snap
        assert all(e["failures"] == 0 and e["ejections"] == 0 for e in snap["endpoints"].values()), snap
        # each call reached one replica once: an application error is never sent to another (it may
        # have done its work)
        counts = []
        for replica in (a, b):
            with grpc.insecure_channel(replica.address) as channel:
                got = kv_pb2_grpc.KVStub(channel).Get(kv_pb2.GetRequest(key="__calls__"), timeout=10)
                counts.append(int(got.value))
        assert sum(counts) == 11, counts


def test_killed_remote_client_refuses_calls_and_bad_options_are_typed(replicas: Callable[..., Replica]) -> None:
    a = replicas()
    client = RemoteClient(remote(f"static:///{a.address}"))
    kv = client.dispense(PLUGIN_NAME)
    client.kill()
    assert a.proc.poll() is None  # kill() only disconnects: the shared plugin runs on
    with pytest.raises(ClientStateError):
        kv.get("k")
    with pytest.raises(ConfigError, match="mTLS .* or, deliberately, in plaintext"):
        RemoteClient(RemoteConfig(target=f"static:///{a.address}", handshake=HANDSHAKE,
                                  plugins=PLUGINS)).start()
    with pytest.raises(ConfigError, match="unknown pick policy 'random'"):
        RemoteClient(remote(f"static:///{a.address}", policy="random")).start()
    with pytest.raises(ConfigError, match="invalid OutlierPolicy"):
        OutlierPolicy(consecutive_failures=0)


def test_a_stalling_replica_is_ejected_by_deadlines_and_returns_after_its_ejection_time(
        replicas: Callable[..., Replica]) -> None:
    a, b = replicas(), replicas()
    outlier = OutlierPolicy(consecutive_failures=2, base_ejection_time=1.0, max_ejection_time=2.0)
    # 2 s per call: a healthy replica's call on a loaded machine must never be the third timeout
    with RemoteClient(remote(f"static:///{a.address},{b.address}", outlier=outlier, call_timeout=2.0)) as client:
        kv = client.dispense(PLUGIN_NAME)
        key_a = f"tcp:{a.address}"
        for rep in (a, b):  # each replica has its own store: a pinned stub reaches one of them
            kv_pb2_grpc.KVStub(client.pool.pinned(f"tcp:{rep.address}")).Put(
                kv_pb2.PutRequest(key="k", value=b"v"), timeout=2.0)
        # Only a stalls (its health stays SERVING: only the outlier detection can take it out).
        stub_a = kv_pb2_grpc.KVStub(client.pool.pinned(key_a))
        stub_a.Put(kv_pb2.PutRequest(key="__slow__", value=b"2"), timeout=2.0)
        outcomes = []
        for _ in range(12):
            result, took = timed(kv, "k", 2.0)
            assert took < 2.0 + SLACK
            outcomes.append("ok" if result == b"v" else type(result).__name__)
        assert outcomes.count("CallTimeout") == 2, outcomes  # then a is ejected: the rest go to b
        snap = client.metrics()["endpoints"][key_a]
        assert snap["ejections"] == 1 and snap["healthy"] is True
        assert wait_until(lambda: not client.metrics()["endpoints"][key_a]["ejected"], 5)
        before = client.metrics()["endpoints"][key_a]["picks"]
        assert all(kv.get("k") == b"v" for _ in range(6))
        assert client.metrics()["endpoints"][key_a]["picks"] > before  # it is back in rotation


def test_ejection_time_grows_with_each_ejection_is_capped_decays_and_respects_the_percentage() -> None:
    from plugbay.network.ejection import EjectionState

    policy = OutlierPolicy(consecutive_failures=2, base_ejection_time=10.0, max_ejection_time=25.0,
                           max_ejection_percent=34)
    state = EjectionState()
    assert [state.failure(), state.failure()] == [1, 2]
    assert state.eject(policy, now=0.0) == 10.0 and state.ejected(5.0) and not state.ejected(10.0)
    assert state.tick(policy, 10.0) is True  # back at the end of its time
    assert state.eject(policy, now=11.0) == 20.0  # second ejection: twice as long
    assert state.tick(policy, 31.0) is True
    assert state.eject(policy, now=32.0) == 25.0  # third: capped
    assert state.tick(policy, 57.0) is True
    assert state.tick(policy, 67.0) is False and state.multiplier == 2  # a base time in: multiplier decays
    assert state.total == 3
    assert policy.may_eject(0, 3) and not policy.may_eject(1, 3)  # 34% of 3: one at a time
    assert policy.may_eject(0, 1)  # one may always be ejected...
    assert not OutlierPolicy(max_ejection_percent=0).may_eject(0, 5)  # ...unless ejection is off


def test_no_more_than_max_ejection_percent_are_ejected_at_once(replicas: Callable[..., Replica]) -> None:
    a, b = replicas(), replicas()
    outlier = OutlierPolicy(consecutive_failures=1, base_ejection_time=30.0, max_ejection_percent=50)
    with RemoteClient(remote(f"static:///{a.address},{b.address}", outlier=outlier, call_timeout=0.3)) as client:
        for rep in (a, b):  # both stall: each call times out
            kv_pb2_grpc.KVStub(client.pool.pinned(f"tcp:{rep.address}")).Put(
                kv_pb2.PutRequest(key="__slow__", value=b"6"), timeout=2.0)
        kv = client.dispense(PLUGIN_NAME)
        for _ in range(6):
            result, took = timed(kv, "k", 0.3)
            assert type(result).__name__ == "CallTimeout" and took < 0.3 + SLACK
        snap = client.metrics()
        assert snap["ejected"] == 1 and snap["ejections"] == 1, snap  # half of two: the other stays in


def test_a_lone_ejected_endpoint_that_passes_its_health_checks_still_gets_calls(
        replicas: Callable[..., Replica]) -> None:
    a = replicas()
    outlier = OutlierPolicy(consecutive_failures=1, base_ejection_time=30.0)
    with RemoteClient(remote(f"static:///{a.address}", outlier=outlier, call_timeout=0.5)) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("k", b"v")
        kv.put("__slow__", b"1")  # one stuck Get: a timeout, which ejects the only endpoint for 30 s
        result, took = timed(kv, "k", 0.5)
        assert type(result).__name__ == "CallTimeout" and took < 0.5 + SLACK, result
        snap = client.metrics()
        assert snap["ejected"] == 1 and snap["available"] == 1, snap  # ejected, yet calls may go there
        key = f"tcp:{a.address}"
        picks = snap["endpoints"][key]["picks"]
        assert [kv.get("k") for _ in range(3)] == [b"v"] * 3  # not NoEndpointsError for 30 s
        snap = client.metrics()
        assert snap["endpoints"][key]["ejected"] and snap["endpoints"][key]["picks"] == picks + 3, snap
        pinned = kv_pb2_grpc.KVStub(client.pool.pinned(key))
        assert pinned.Get(kv_pb2.GetRequest(key="k"), timeout=2.0).value == b"v"

def test_a_refusing_endpoint_is_tried_again_while_another_is_merely_unhealthy(
        replicas: Callable[..., Replica], closed_port: int) -> None:
    a, nobody = replicas(), closed_port
    port = a.port
    # health every second: the restarting endpoint stays pickable, so the call itself finds it refusing
    with RemoteClient(remote(f"static:///{a.address},127.0.0.1:{nobody}", health_interval=1.0,
                             call_timeout=15.0)) as client:
        kv = client.dispense(PLUGIN_NAME)
        assert kv.get("__pid__") == str(a.proc.pid).encode()
        assert wait_until(lambda: client.metrics()["endpoints"][f"tcp:127.0.0.1:{nobody}"]["healthy"] is False, 10)
        a.stop()  # restarts on its port: refuses now, is back in a moment
        connection_lost(client, f"tcp:{a.address}")  # else the call may break in flight, not sent again
        back: list[Replica] = []
        restart = threading.Thread(target=lambda: back.append(replicas(f"127.0.0.1:{port}")),
                                   name="plugbay-test-restart")
        restart.start()
        try:
            # tried once and refused, it must be tried again within the deadline, not left out
            # because the other endpoint (unhealthy, never tried) keeps "every endpoint tried" false
            result = kv.get("__pid__")
        finally:
            restart.join(30)
        assert back and result == str(back[0].proc.pid).encode()


def test_streams_that_run_to_their_deadline_do_not_count_against_the_endpoint(
        replicas: Callable[..., Replica]) -> None:
    # a health watch (a Supervisor's) ends by its deadline on purpose, every interval: no failure
    from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc

    a = replicas()
    outlier = OutlierPolicy(consecutive_failures=2, base_ejection_time=30.0)
    with RemoteClient(remote(f"static:///{a.address}", outlier=outlier)) as client:
        stub = health_pb2_grpc.HealthStub(client.pool)  # type: ignore[no-untyped-call]
        for _ in range(4):
            watch = stub.Watch(health_pb2.HealthCheckRequest(service="plugin"), timeout=0.3)
            with pytest.raises(grpc.RpcError) as ended:
                for _answer in watch:
                    pass
            assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        snap = client.metrics()
        assert snap["ejections"] == 0 and snap["endpoints"][f"tcp:{a.address}"]["failures"] == 0, snap


def test_future_calls_fail_over_from_a_dead_endpoint_as_blocking_calls_do(
        replicas: Callable[..., Replica]) -> None:
    a, b = replicas(), replicas()
    # health every 30 s: the calls, not a health check, meet the dead endpoint
    with RemoteClient(remote(f"static:///{a.address},{b.address}", health_interval=30.0,
                             call_timeout=10.0)) as client:
        stub = kv_pb2_grpc.KVStub(client.channel)
        get = stub.Get  # type: ignore[attr-defined]
        first_check_passed(client, f"tcp:{a.address}", f"tcp:{b.address}")  # else all four may go to one
        pids = {get.future(kv_pb2.GetRequest(key="__pid__"), timeout=10).result(timeout=20).value for _ in range(4)}
        assert pids == {str(r.proc.pid).encode() for r in (a, b)}  # both endpoints connected
        a.kill9()
        connection_lost(client, f"tcp:{a.address}")  # else a future may break in flight, not sent again
        futures = [get.future(kv_pb2.GetRequest(key="__pid__"), timeout=10) for _ in range(10)]
        done: list[Any] = []

        def failing(_: Any) -> None:
            raise RuntimeError("a caller's callback that fails")

        futures[-1].add_done_callback(failing)  # logged; the next one still runs, as with gRPC's own
        futures[-1].add_done_callback(done.append)
        results = [f.result(timeout=20).value for f in futures]
        assert results == [str(b.proc.pid).encode()] * 10, results
        assert client.metrics()["resends"] >= 1
        assert wait_until(lambda: len(done) == 1, 5)
        last = futures[-1]
        assert last.done() and not last.running() and last.exception() is None
        assert last.code() == grpc.StatusCode.OK and not last.cancel()

        slow = get.future(kv_pb2.GetRequest(key="__sleep__"), timeout=10)
        assert slow.cancel()
        assert slow.cancelled() and slow.done()
        with pytest.raises(grpc.FutureCancelledError):
            slow.result(timeout=5)


def test_cancelling_a_future_that_waits_to_fail_over_ends_its_wait_at_once(closed_port: int) -> None:
    from plugbay.network.pool import EndpointPool
    from plugbay.network.resolver import Endpoint
    from tests.race_util import Starting
    from tests.test_network_drain import PushResolver

    nobody = closed_port  # refuses every connection: each try fails before it was sent
    pool = EndpointPool(PushResolver([Endpoint("tcp", f"127.0.0.1:{nobody}")]), insecure=True,
                        health_interval=0.2, options=FAST_RECONNECT, name="kv-cancel-wait")
    try:
        pool.start()
        # started on a thread of its own, as a hooked future's is: the first try may already find the
        # endpoint unhealthy and wait for it (future() would then hold its caller until the deadline)
        future = pool.unary_unary("/proto.KV/Get").unstarted_future(b"", timeout=30)
        starting = Starting(lambda: future.start(cancellable=True))
        key = f"tcp:127.0.0.1:{nobody}"
        assert wait_until(lambda: pool.metrics()["endpoints"][key]["healthy"] is False, 10)
        time.sleep(1.0)  # past its pauses between tries: it now waits for an endpoint to pick
        picks = sum(e["picks"] for e in pool.metrics()["endpoints"].values())
        assert future.cancel() and future.cancelled()
        assert starting.ended(2), "the first try went on waiting for an endpoint"
        assert wait_until(lambda: not any(t.name == "plugbay-failover-kv-cancel-wait"
                                          for t in threading.enumerate()), 2), "the failover went on waiting"
        assert sum(e["picks"] for e in pool.metrics()["endpoints"].values()) == picks  # no try after the cancel
    finally:
        pool.close()


def test_a_cancelled_hooked_future_waiting_for_an_endpoint_is_never_sent(tmp_path: Any) -> None:
    # with a call layer installed the future's first try runs on its own thread; the pool's wait for
    # an endpoint did not see a cancel(), and the Put was sent (and applied) once the replica came up
    from plugbay import CircuitBreaker
    from plugbay.core.host.channel import ManagedChannel
    from plugbay.core.resilience.calls import install
    from plugbay.network.pool import EndpointPool
    from plugbay.network.resolver import Endpoint
    from tests.test_network_drain import PushResolver

    held = HeldPort()  # refuses every connection until the replica starts on it
    port = held.port
    key = f"tcp:127.0.0.1:{port}"
    pool = EndpointPool(PushResolver([Endpoint("tcp", f"127.0.0.1:{port}")]), insecure=True,
                        health_interval=0.2, options=FAST_RECONNECT, name="kv-cancel-hooked")
    replica = None
    try:
        pool.start()
        assert wait_until(lambda: pool.metrics()["endpoints"][key]["healthy"] is False, 10)
        channel = ManagedChannel(pool, 30.0, None, "kv-cancel-hooked")
        install(channel, breaker=CircuitBreaker())
        stub = kv_pb2_grpc.KVStub(channel)
        future = stub.Put.future(kv_pb2.PutRequest(key="cancelled", value=b"sent after cancel"), timeout=20)
        assert wait_until(lambda: any(t.name == "plugbay-call-kv-cancel-hooked" for t in threading.enumerate()), 10)
        assert future.cancel() and future.cancelled()
        assert wait_until(lambda: not any(t.name == "plugbay-call-kv-cancel-hooked"
                                          for t in threading.enumerate()), 5), "its try went on waiting for an endpoint"
        held.release()
        replica = Replica(f"127.0.0.1:{port}", cwd=tmp_path)
        install(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Get(kv_pb2.GetRequest(key="cancelled"), timeout=20)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND  # the cancelled Put never reached the plugin
    finally:
        held.release()
        pool.close()
        if replica is not None:
            replica.stop()


def test_a_hooked_future_that_failed_before_any_try_tells_its_status_at_once(tmp_path: Any) -> None:
    # an argument grpc refuses (metadata that is not text) fails the try before it is sent: code() and
    # details() waited for that never-started try for good
    from plugbay import CircuitBreaker
    from plugbay.core.host.channel import ManagedChannel
    from plugbay.core.resilience.calls import install
    from tests.race_util import Starting

    from plugbay.network.pool import EndpointPool
    from plugbay.network.resolver import Endpoint
    from tests.test_network_drain import PushResolver

    replica = Replica("127.0.0.1:0", cwd=tmp_path)
    port = replica.port
    pool = EndpointPool(PushResolver([Endpoint("tcp", f"127.0.0.1:{port}")]), insecure=True,
                        options=FAST_RECONNECT, name="kv-bad-arg")
    try:
        pool.start()
        channel = ManagedChannel(pool, 30.0, None, "kv-bad-arg")
        install(channel, breaker=CircuitBreaker())
        future = kv_pb2_grpc.KVStub(channel).Get.future(kv_pb2.GetRequest(key="k"), timeout=20,
                                                         metadata=[("x-n", 1)])
        with pytest.raises(TypeError):
            future.result(timeout=20)
        asking = Starting(lambda: (future.code(), future.details()))
        assert asking.ended(5), "code()/details() waited for a try that never started"
        assert future.code() == grpc.StatusCode.UNKNOWN and "TypeError" in (future.details() or "")
    finally:
        pool.close()
        replica.stop()
