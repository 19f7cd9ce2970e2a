"""A call that waited for an endpoint keeps its deadline: unary, future() and streams alike.

A real gRPC server on loopback whose methods take 5 s, and a real EndpointPool
fed by a resolver written for the test (no endpoint at first, the server 1.5 s
later). With timeout=2.0 each call must reach the server with the deadline it
was made with, not a fresh 2 s from when the endpoint appeared (1.5 s + 2 s).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
import grpc
import pytest

from plugbay.network.pool import EndpointPool
from plugbay.network.resolver import Endpoint, OnChange

APPEARS_AFTER = 1.5
TIMEOUT = 2.0


class LateResolver:
    """No endpoint at first; ``endpoint`` APPEARS_AFTER seconds later."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.timer: threading.Timer | None = None

    def start(self, on_change: OnChange) -> None:
        on_change([])
        self.timer = threading.Timer(APPEARS_AFTER, lambda: on_change([self.endpoint]))
        self.timer.start()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer.join(5)


ARRIVED: list[float] = []  # the deadline each call reached the server with (time.monotonic())


def _slow_unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    _sleep_while_active(context)
    return b"late"


def _slow_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    _sleep_while_active(context)
    yield b"late"


def _sleep_while_active(context: grpc.ServicerContext) -> None:
    remaining = context.time_remaining()
    ARRIVED.append(time.monotonic() + remaining if remaining is not None else float("inf"))
    deadline = time.monotonic() + 5.0
    while context.is_active() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture()
def slow_server() -> Iterator[str]:
    server = grpc.server(ThreadPoolExecutor(max_workers=4, thread_name_prefix="slow-server"))
    handlers = {"Unary": grpc.unary_unary_rpc_method_handler(_slow_unary),
                "Stream": grpc.unary_stream_rpc_method_handler(_slow_stream)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Slow", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ARRIVED.clear()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait(5)


def _timed(pool: EndpointPool, how: str) -> tuple[BaseException | None, float, float]:
    """The call's error, how long it took, and when its deadline was (time.monotonic())."""
    started = time.monotonic()
    try:
        if how == "unary":
            pool.unary_unary("/test.Slow/Unary")(b"x", timeout=TIMEOUT)
        elif how == "future":
            pool.unary_unary("/test.Slow/Unary").future(b"x", timeout=TIMEOUT).result(timeout=10)
        else:
            list(pool.unary_stream("/test.Slow/Stream")(b"x", timeout=TIMEOUT))
    except grpc.RpcError as exc:
        return exc, time.monotonic() - started, started + TIMEOUT
    return None, time.monotonic() - started, started + TIMEOUT


@pytest.mark.parametrize("how", ["unary", "future", "stream"])
def test_a_call_that_waited_for_an_endpoint_ends_at_its_own_deadline(slow_server: str, how: str) -> None:
    resolver = LateResolver(Endpoint("tcp", slow_server))
    pool = EndpointPool(resolver, insecure=True, health_interval=0.2, name="slow")
    try:
        pool.start()
        error, took, deadline = _timed(pool, how)
        assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
        assert took > TIMEOUT - 0.1, took  # it waited for its deadline (not refused for want of an endpoint)
        # The old code gave the call a fresh 2 s once the endpoint appeared: the server saw a deadline
        # 1.5 s later than the caller's. Now the same one, but for the time the call took to get there
        # (a call that expired on its way never got there: its deadline was kept too).
        assert all(seen < deadline + APPEARS_AFTER / 2 for seen in ARRIVED), (ARRIVED, deadline)
        assert took < 30, took  # a hang guard only
    finally:
        pool.close()
