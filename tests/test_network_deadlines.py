"""A call that waited for an endpoint keeps its deadline: unary, future() and streams alike.

A real gRPC server on loopback whose methods take 5 s, and a real EndpointPool
fed by a resolver written for the test (no endpoint at first, the server 1.5 s
later). With timeout=2.0 each call must end near 2 s, not 1.5 s + 2 s.
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


def _slow_unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    _sleep_while_active(context)
    return b"late"


def _slow_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    _sleep_while_active(context)
    yield b"late"


def _sleep_while_active(context: grpc.ServicerContext) -> None:
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
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait(5)


def _timed(pool: EndpointPool, how: str) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        if how == "unary":
            pool.unary_unary("/test.Slow/Unary")(b"x", timeout=TIMEOUT)
        elif how == "future":
            pool.unary_unary("/test.Slow/Unary").future(b"x", timeout=TIMEOUT).result(timeout=10)
        else:
            list(pool.unary_stream("/test.Slow/Stream")(b"x", timeout=TIMEOUT))
    except grpc.RpcError as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


@pytest.mark.parametrize("how", ["unary", "future", "stream"])
def test_a_call_that_waited_for_an_endpoint_ends_at_its_own_deadline(slow_server: str, how: str) -> None:
    resolver = LateResolver(Endpoint("tcp", slow_server))
    pool = EndpointPool(resolver, insecure=True, health_interval=0.2, name="slow")
    try:
        pool.start()
        error, took = _timed(pool, how)
        assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
        # 2 s deadline; the old code gave the call a fresh 2 s after 1.5 s of waiting (3.5 s); 1.25 s of slack
        assert TIMEOUT - 0.1 < took < APPEARS_AFTER + TIMEOUT - 0.25, took
    finally:
        pool.close()
