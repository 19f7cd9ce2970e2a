"""The pool resends only calls that provably never left: a plugin's own status or a broken stream ends the call.

Real KV replicas (tests/plugins/net_kv.py) on loopback. Each replica counts the
Gets it ran (Get("__calls__")), so "executed once" is what the plugins saw.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from tests.net_util import HANDSHAKE, PLUGIN_NAME, PLUGINS, Replica, connection_lost, first_check_passed
from tests.resilience_util import wait_until

from kvproto import kv_pb2, kv_pb2_grpc  # noqa: E402, I001

from plugbay import NoEndpointsError, PlugbayError, RemoteClient, RemoteConfig, RemoteTLSError

FAST_RECONNECT = (("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 300),
                  ("grpc.min_reconnect_backoff_ms", 100))


@pytest.fixture()
def replicas() -> Iterator[Callable[[], Replica]]:
    started: list[Replica] = []

    def start() -> Replica:
        started.append(Replica("127.0.0.1:0"))
        return started[-1]

    try:
        yield start
    finally:
        for replica in started:
            replica.stop()


def remote(reps: list[Replica], **kw: Any) -> RemoteConfig:
    target = "static:///" + ",".join(r.address for r in reps)
    return RemoteConfig(target=target, handshake=HANDSHAKE, plugins=PLUGINS, insecure=True, call_timeout=3.0,
                        health_interval=0.2, health_timeout=0.5, grpc_options=FAST_RECONNECT, name="kv-once", **kw)


def on(client: RemoteClient, rep: Replica) -> Any:
    return kv_pb2_grpc.KVStub(client.pool.pinned(f"tcp:{rep.address}"))


def calls(client: RemoteClient, rep: Replica) -> int:
    return int(on(client, rep).Get(kv_pb2.GetRequest(key="__calls__"), timeout=3.0).value)


@pytest.mark.parametrize("text", [
    "payment backend: connection refused",
    # a plugin relaying its own backend's status word for word, as gRPC words a connection failure
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.9.9.9:443: Failed to connect to remote"
    " host: Connection refused",
])
def test_a_plugins_own_unavailable_status_is_not_resent(replicas: Callable[[], Replica], text: str) -> None:
    reps = [replicas(), replicas()]
    with RemoteClient(remote(reps)) as client:
        for rep in reps:
            on(client, rep).Put(kv_pb2.PutRequest(key="__fail_text__", value=text.encode()), timeout=3.0)
            on(client, rep).Put(kv_pb2.PutRequest(key="__fail__", value=b"100"), timeout=3.0)
        kv = client.dispense(PLUGIN_NAME)
        with pytest.raises(grpc.RpcError) as err:
            kv.get("k")
        assert not isinstance(err.value, NoEndpointsError), err.value
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert text in str(err.value.details())
        assert sum(calls(client, rep) for rep in reps) == 1  # the plugins ran it once, nobody resent it
        snap = client.metrics()
        assert snap["resends"] == 0 and snap["ejections"] == 0, snap


@pytest.mark.parametrize("count", [1, 2])
def test_a_replica_killed_in_the_middle_of_a_call_ends_that_call(replicas: Callable[[], Replica],
                                                                 count: int) -> None:
    reps = [replicas() for _ in range(count)]
    with RemoteClient(remote(reps, policy="pick_first")) as client:
        first = reps[0]
        on(client, first).Put(kv_pb2.PutRequest(key="k", value=b"v"), timeout=3.0)
        on(client, first).Put(kv_pb2.PutRequest(key="__slow__", value=b"1"), timeout=3.0)
        kv = client.dispense(PLUGIN_NAME)
        outcome: list[Any] = []

        def call() -> None:
            try:
                outcome.append(kv.get("k"))
            except BaseException as exc:  # noqa: BLE001 - the test inspects it
                outcome.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        try:
            assert wait_until(lambda: calls(client, first) == 1, 5)  # the call is running in the plugin
            first.kill9()
        finally:
            caller.join(10)
        assert not caller.is_alive()
        error = outcome[0]
        assert isinstance(error, grpc.RpcError), error
        assert not isinstance(error, (RemoteTLSError, NoEndpointsError)), error
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        for rep in reps[1:]:
            assert calls(client, rep) == 0  # not resent to the other replica
        assert client.metrics()["resends"] == 0


def test_a_replica_that_refuses_connections_still_gets_its_calls_sent_elsewhere(
        replicas: Callable[[], Replica]) -> None:
    a, b = replicas(), replicas()
    with RemoteClient(remote([a, b])) as client:
        kv = client.dispense(PLUGIN_NAME)
        on(client, b).Put(kv_pb2.PutRequest(key="k", value=b"v"), timeout=3.0)
        a.kill9()
        connection_lost(client, f"tcp:{a.address}")  # else a call may break in flight, possibly received
        assert all(kv.get("__pid__") == str(b.proc.pid).encode() for _ in range(10))


def test_a_client_streaming_future_is_not_resent_with_its_stream_partly_read(
        replicas: Callable[[], Replica]) -> None:
    # a try refused by a dead replica may already have read request messages: a resend would give the
    # other replica a shortened stream and report success, so the future ends as the blocking call does
    a, b = replicas(), replicas()
    config = RemoteConfig(target=f"static:///{a.address},{b.address}", handshake=HANDSHAKE, plugins=PLUGINS,
                          insecure=True, call_timeout=5.0, health_interval=30.0, name="kv-stream")
    with RemoteClient(config) as client:
        count = client.channel.stream_unary("/plugbay.test.Stream/Count", request_serializer=lambda m: m,
                                            response_deserializer=lambda m: m)
        first_check_passed(client, f"tcp:{a.address}", f"tcp:{b.address}")  # else all four may go to one
        assert {count(iter([b"x"]), timeout=3.0).split(b":")[0] for _ in range(4)} == {
            str(a.proc.pid).encode(), str(b.proc.pid).encode()}  # both endpoints connected
        a.kill9()
        sent = [f"m{i}" for i in range(5)]
        failed = 0
        for _ in range(6):
            future = count.future(iter(m.encode() for m in sent), timeout=5.0)
            try:
                answer = future.result(timeout=10.0)
            except PlugbayError:
                failed += 1
                continue
            assert answer == f"{b.proc.pid}:5:{','.join(sent)}".encode()
        assert failed >= 1  # a try went to the dead replica
        assert client.metrics()["resends"] == 0
