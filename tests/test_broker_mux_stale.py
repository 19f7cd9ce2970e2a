"""A knock whose dialer gave up routes no later stream (multiplexed brokering, plugbay on both sides).

The serving side routes the peer's next stream by the order of knocks; a knock
answered after its dialer timed out (it came before accept_and_serve) must not
take the stream the dialer opens next for another id.
"""

from __future__ import annotations

import time

import pytest

from plugbay.errors import BrokerTimeoutError
from tests.test_broker import check, register
from tests.test_broker_mux import SERVING, MuxPair, close_mux_pair, make_mux_pair


@pytest.mark.parametrize("mode", ["unix", "unix-eager"])
def test_a_knock_answered_after_its_dial_timed_out_takes_no_later_stream(mode: str) -> None:
    network, _, eager = mode.partition("-")
    p = make_mux_pair(network)
    p.front.peer_holds = bool(eager)  # eager: the plugin opens its stream right after the knock
    try:
        a = p.host.next_id()
        with pytest.raises(BrokerTimeoutError):
            p.plugin.dial(a, timeout=0.5)  # nobody serves it yet
        p.host.accept_and_serve(a, register("helper-a"))  # answers that knock: its dialer is gone
        b = p.host.next_id()
        p.host.accept_and_serve(b, register("helper-b"))
        for _ in range(2):
            assert check(p.plugin.dial(b), "helper-b") == SERVING
        assert check(p.plugin.dial(a), "helper-a") == SERVING
    finally:
        close_mux_pair(p)


def test_a_knock_older_than_a_dial_waits_is_not_answered_when_its_id_is_served() -> None:
    p = make_mux_pair("unix")
    p.host.dial_timeout = 0.5  # how long an early knock is kept
    try:
        a = p.host.next_id()
        with pytest.raises(BrokerTimeoutError):
            p.plugin.dial(a, timeout=0.3)
        time.sleep(0.5)
        p.host.accept_and_serve(a, register("helper-a"))
        assert not p.hostmux._knocks and a not in p.host._early_knocks
        assert check(p.plugin.dial(a), "helper-a") == SERVING
    finally:
        close_mux_pair(p)


def test_a_main_channel_connection_after_a_host_dial_timed_out_reaches_the_main_server() -> None:
    # the host gave up dialing a (its own timeout, shorter than the plugin's dial_timeout); the plugin
    # serves a later and answers the knock: the host takes that route itself, so its next main-channel
    # connection (gRPC reconnecting) still reaches the plugin's main server, not helper-a
    import grpc

    from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc

    p = make_mux_pair("unix")
    try:
        a = p.plugin.next_id()
        with pytest.raises(BrokerTimeoutError):
            p.host.dial(a, timeout=0.5)
        # the knock may reach the plugin only after the dial gave up: the main channel here connects
        # lazily, and its connection waits while the dial holds the mux's dial_lock. Served before
        # the knock comes, a is acked the moment it does, and the route would be queued after the
        # wait below looked: the second connection then races the host's taking of that route
        deadline = time.monotonic() + 5
        while not knocked(p, a) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert knocked(p, a), "the host's knock never reached the plugin"
        p.plugin.accept_and_serve(a, register("helper-a"))  # answers that knock: its dialer is gone
        while p.front._knocks and time.monotonic() < deadline:  # the host consumes the route
            time.sleep(0.02)
        assert not p.front._knocks, "the host did not take the route of the knock it gave up on"
        second = grpc.insecure_channel(f"unix:{p.hostmux.local_address[1]}",
                                       options=[("grpc.use_local_subchannel_pool", 1)])
        try:
            with pytest.raises(grpc.RpcError) as answered:  # the main server has no health for helper-a
                health_pb2_grpc.HealthStub(second).Check(  # type: ignore[no-untyped-call]
                    health_pb2.HealthCheckRequest(service="helper-a"), timeout=5)
            assert answered.value.code() != grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            second.close()
        assert check(p.host.dial(a), "helper-a") == SERVING  # and a dial of a works as ever
    finally:
        close_mux_pair(p)


def knocked(p: MuxPair, id: int) -> bool:
    """The plugin holds ``id``'s knock, unanswered (it does not serve ``id`` yet)."""
    with p.plugin._cond:
        return id in p.plugin._early_knocks


def test_an_eager_dial_after_one_that_timed_out_never_reaches_the_first_ids_server() -> None:
    # the plugin opens its stream right after its knock (the host holds it): a late answer to the
    # first knock takes only a stream held right after that knock, never the next dial's
    import threading

    p = make_mux_pair("unix")
    p.front.peer_holds = True
    try:
        wrong = 0
        for i in range(40):  # bounded: a round takes about 0.2 s; the race needs a few of them
            x, y = p.host.next_id(), p.host.next_id()
            p.host.accept_and_serve(y, register(f"h{y}"))
            with pytest.raises(BrokerTimeoutError):
                p.plugin.dial(x, timeout=0.15)
            late = threading.Thread(target=p.host.accept_and_serve, args=(x, register(f"h{x}")))
            got: list[object] = []
            dialing = threading.Thread(target=lambda: got.append(check(p.plugin.dial(y, timeout=3), f"h{y}")))
            dialing.start()
            time.sleep(i % 5 / 1000)  # the late serve lands at various points of the dial of y
            late.start()  # races the dial of y, as the host serving x late would
            dialing.join(10)
            late.join(10)
            wrong += got != [SERVING]
        assert wrong == 0
    finally:
        close_mux_pair(p)
