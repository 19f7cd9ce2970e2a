"""A stopped brokered server's idle workers serve the next server; busy ones are never handed on.

Real brokers over a real gRPC connection (the pair of tests/test_broker.py):
each callback id still gets its own server, stopped with it, while the
worker threads its calls ran on carry over to the next server once idle.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest

from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.core.broker import spares
from plugbay.core.broker.brokertransport import BrokerTransport
from tests.test_broker import Pair, _close_pair, _make_pair, check, register, sockdir  # noqa: F401
from tests.thread_util import thread_names, wait_for


class _Recording(health_pb2_grpc.HealthServicer):
    """SERVING for its name; notes the thread that answered and may hold the call until released."""

    def __init__(self, name: str, hold: threading.Event | None = None) -> None:
        self.name = name
        self.hold = hold
        self.threads: list[int] = []
        self.entered = threading.Event()

    def Check(self, request, context):
        self.threads.append(threading.get_ident())
        self.entered.set()
        if self.hold is not None:
            self.hold.wait(20)
        if request.service != self.name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"I am {self.name}")
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def _brokered_workers() -> list[str]:
    return [n for n in thread_names() if n.startswith("plugbay-brokered")]


def _idle_pools() -> int:
    """Stopped servers' worker pools the process's spares keep for the next server's first call."""
    holder = spares._SPARES
    if holder is None:
        return 0
    with holder._cond:
        return len(holder._pools)


@pytest.fixture
def pair(sockdir: str) -> Iterator[Pair]:  # noqa: F811
    p = _make_pair(sockdir, BrokerTransport(socket_dir=sockdir), BrokerTransport(socket_dir=sockdir))
    yield p
    _close_pair(p)


def test_idle_workers_of_a_stopped_server_serve_the_next_one(pair: Pair) -> None:
    answered: list[int] = []
    for n in range(5):
        servicer = _Recording(f"call{n}")
        sid = pair.host.next_id()
        pair.host.accept_and_serve(sid, lambda s, v=servicer: health_pb2_grpc.add_HealthServicer_to_server(v, s))
        ch = pair.plugin.dial(sid)
        assert check(ch, f"call{n}") == health_pb2.HealthCheckResponse.SERVING
        pair.host.stop_serving(sid)
        with pytest.raises(grpc.RpcError):
            check(ch, f"call{n}")  # the id's own server is gone with it
        ch.close()
        answered += servicer.threads
        # the stopped server is freed in the background; then one idle worker is left for the next, its pool
        # handed back (the worker thread is there before that too: under load the next server's first call
        # came first and made a pool of its own)
        wait_for(lambda: len(_brokered_workers()) == 1 and _idle_pools() == 1,
                 "the stopped server's workers to be idle")
    # five servers, one after another, all answered on the one worker carried over
    assert len(set(answered)) == 1, answered


def test_workers_still_running_a_call_are_not_handed_on(pair: Pair) -> None:
    release = threading.Event()
    stuck = _Recording("stuck", hold=release)
    sid = pair.host.next_id()
    pair.host.accept_and_serve(sid, lambda s: health_pb2_grpc.add_HealthServicer_to_server(stuck, s))
    ch = pair.plugin.dial(sid)
    future = health_pb2_grpc.HealthStub(ch).Check.future(health_pb2.HealthCheckRequest(service="stuck"),
                                                          timeout=20)
    try:
        assert stuck.entered.wait(10)
        pair.host.stop_serving(sid)  # cancels the call; its handler is still running
        with pytest.raises(grpc.RpcError):
            future.result(timeout=10)
        after = _Recording("after")
        sid2 = pair.host.next_id()
        pair.host.accept_and_serve(sid2, lambda s: health_pb2_grpc.add_HealthServicer_to_server(after, s))
        ch2 = pair.plugin.dial(sid2)
        assert check(ch2, "after") == health_pb2.HealthCheckResponse.SERVING
        ch2.close()
        pair.host.stop_serving(sid2)
        # the next server did not get the busy workers: its call ran on another thread
        assert after.threads and after.threads[0] != stuck.threads[0]
    finally:
        release.set()
        ch.close()
    # the busy pool is joined once its call ends; at most the idle one is kept
    wait_for(lambda: len(_brokered_workers()) <= 1, "the busy server's workers to be joined")
