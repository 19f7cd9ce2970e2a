"""Multiplexed plaintext broker ids share one grpcio server (plugbay.core.broker.shared): calls stay with their id.

Real parts: a real grpc.Server "plugin" behind a PluginFront, a HostMux host and
both brokers (tests/test_broker_mux.make_mux_pair); the host's brokered services
run on the process's shared server. Each test checks that a connection made for
one broker id never reaches another id's services, also while a stop is under way.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest

from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.core.broker import shared
from plugbay.core.protocol.tls import generate_cert
from tests.race_util import PauseAt, Starting
from tests.test_broker_mux import MuxPair, close_mux_pair, make_mux_pair

SERVING = health_pb2.HealthCheckResponse.SERVING


class Recorder(health_pb2_grpc.HealthServicer):
    """Answers for its own name only and counts the calls that reached it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    def Check(self, request, context):
        self.calls += 1
        if request.service != self.name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"I am {self.name}")
        return health_pb2.HealthCheckResponse(status=SERVING)

    def Watch(self, request, context):
        self.calls += 1
        for _ in range(3):
            yield health_pb2.HealthCheckResponse(status=SERVING)


def serving(servicer: Recorder):  # type: ignore[no-untyped-def]
    return lambda server: health_pb2_grpc.add_HealthServicer_to_server(servicer, server)


def check(channel: grpc.Channel, name: str) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status


@pytest.fixture(params=["plain", "automtls"])
def mpair(request: pytest.FixtureRequest) -> Iterator[MuxPair]:
    # AutoMTLS with P-256 certificates (grpcio's own TLS): a shared server for the certificate pair
    certs = (generate_cert(), generate_cert()) if request.param == "automtls" else (None, None)
    p = make_mux_pair("unix", *certs)
    yield p
    close_mux_pair(p)


def test_ids_share_one_server_and_each_call_reaches_its_own_id(mpair: MuxPair) -> None:
    first, second = Recorder("first"), Recorder("second")
    a, b = mpair.host.next_id(), mpair.host.next_id()
    mpair.host.accept_and_serve(a, serving(first))
    mpair.host.accept_and_serve(b, serving(second))
    assert mpair.host._shared is not None and mpair.host._source is None  # no server of their own
    to_a, to_b = mpair.plugin.dial(a), mpair.plugin.dial(b)
    assert check(to_a, "first") == check(to_b, "second") == SERVING
    # the same service on both ids: the name each answers for proves which id's servicer ran
    with pytest.raises(grpc.RpcError) as err:
        check(to_a, "second")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "I am first" in str(err.value.details())
    # a server stream crosses the shared server's dispatch too
    watched = list(health_pb2_grpc.HealthStub(to_b).Watch(health_pb2.HealthCheckRequest(), timeout=10))
    assert [w.status for w in watched] == [SERVING] * 3
    assert (first.calls, second.calls) == (2, 2)


def test_a_connection_kept_past_stop_serving_never_reaches_the_next_id(mpair: MuxPair) -> None:
    """Held between forgetting the id's connection names and shutting the connections, the old
    connection is still up; a call on it must be refused, not served by the id served next."""
    old, new = Recorder("svc"), Recorder("svc")
    a = mpair.host.next_id()
    mpair.host.accept_and_serve(a, serving(old))
    kept = mpair.plugin.dial(a)
    assert check(kept, "svc") == SERVING
    pause = PauseAt(shared._shut_all.__code__, "call")
    stopping = Starting(lambda: mpair.host.stop_serving(a), pause)
    try:
        pause.wait_reached()
        b = mpair.host.next_id()
        mpair.host.accept_and_serve(b, serving(new))  # the same service, on the same shared server
        with pytest.raises(grpc.RpcError) as err:
            check(kept, "svc")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no longer served" in str(err.value.details())
        assert new.calls == 0 and old.calls == 1
    finally:
        pause.release()
    assert stopping.outcome() is None
    # once stopped, the old channel's connection is shut; redialing id a is refused by its knock
    with pytest.raises(grpc.RpcError):
        check(kept, "svc")
    assert new.calls == 0
    assert check(mpair.plugin.dial(b), "svc") == SERVING and new.calls == 1
    kept.close()


def test_streaming_requests_and_raw_bytes_handlers_are_dispatched(mpair: MuxPair) -> None:
    def collect(requests, context):  # type: ignore[no-untyped-def]
        return b"+".join(requests)

    def chat(requests, context):  # type: ignore[no-untyped-def]
        for r in requests:
            yield r.upper()

    handlers = grpc.method_handlers_generic_handler("t.Raw", {
        "Collect": grpc.stream_unary_rpc_method_handler(collect),
        "Chat": grpc.stream_stream_rpc_method_handler(chat)})
    sid = mpair.host.next_id()
    mpair.host.accept_and_serve(sid, lambda server: server.add_generic_rpc_handlers((handlers,)))
    channel = mpair.plugin.dial(sid)
    assert channel.stream_unary("/t.Raw/Collect")(iter([b"a", b"b", b"c"]), timeout=10) == b"a+b+c"
    assert list(channel.stream_stream("/t.Raw/Chat")(iter([b"x", b"y"]), timeout=10)) == [b"X", b"Y"]
    with pytest.raises(grpc.RpcError) as err:  # a method no live id serves
        channel.unary_unary("/t.Raw/Missing")(b"", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_the_last_broker_stops_the_shared_server(mpair: MuxPair) -> None:
    sid = mpair.host.next_id()
    mpair.host.accept_and_serve(sid, serving(Recorder("x")))
    server = mpair.host._shared
    assert server is not None and server in shared._SHARED.values()
    mpair.host.close()
    assert server not in shared._SHARED.values()  # the only user left: stopped, its socket folder removed
    assert not any(t.name.startswith("plugbay-brokered") for t in threading.enumerate())


@pytest.mark.parametrize("automtls", [False, True], ids=["plain", "automtls"])
def test_two_brokers_serving_the_same_id_number_each_reach_their_own(automtls: bool) -> None:
    """Ids are per broker: two hosts' id 1 on shared servers (one plaintext server for both,
    or one per certificate pair on one worker pool) are two services."""
    pairs = [make_mux_pair("unix", *((generate_cert(), generate_cert()) if automtls else (None, None)))
             for _ in range(2)]
    try:
        servicers = [Recorder("one"), Recorder("two")]
        for p, servicer in zip(pairs, servicers):
            assert p.host.next_id() == 1
            p.host.accept_and_serve(1, serving(servicer))
        assert (pairs[0].host._shared is pairs[1].host._shared) == (not automtls)
        assert check(pairs[0].plugin.dial(1), "one") == SERVING
        assert check(pairs[1].plugin.dial(1), "two") == SERVING
        assert [s.calls for s in servicers] == [1, 1]
        pairs[0].host.stop_serving(1)
        assert check(pairs[1].plugin.dial(1), "two") == SERVING  # the other broker's id 1 lives on
    finally:
        for p in pairs:
            close_mux_pair(p)
    assert shared._SHARED == {} and shared._POOL is None
