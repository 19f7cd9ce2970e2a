"""An ``async def`` handler whose coroutine ignores its cancel keeps its gate slot until it really ends.

A call cut short (deadline, cancel) waits 2 s at most for its coroutine (transport/aiohandlers.py), then
its thread goes. The gate's slot went with it although the coroutine still ran: calls past that found
free slots, and more than ServeConfig.max_workers of the plugin's coroutines ran at once. A real grpcio
server with plugbay's gate and the process's handler loop, called over TCP.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest

from plugbay.core.plugin.gate import RESERVED, HandlerGate
from plugbay.core.plugin.gatedserver import GatedServer
from tests.resilience_util import wait_until

MAX_WORKERS = 2
BOUND = 20.0  # a hang ends here


class _Counting(concurrent.futures.ThreadPoolExecutor):
    """A server pool that knows how many of its tasks (calls' handlers) are running."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers, thread_name_prefix="test-grpc")
        self._lock = threading.Lock()
        self.busy = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        def counted() -> Any:
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.busy -= 1
        with self._lock:
            self.busy += 1
        return super().submit(counted)


class _Stubborn:
    """Coroutines that ignore their cancel until ``let_go``; how many run at once, at most."""

    def __init__(self) -> None:
        self.let_go = threading.Event()
        self._lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def _enter(self) -> None:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)

    def _leave(self) -> None:
        with self._lock:
            self.running -= 1

    async def _hold(self) -> None:
        while not self.let_go.is_set():
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                continue  # ignores its cancel

    async def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._enter()
        try:
            await self._hold()
        finally:
            self._leave()
        return b"done"

    async def stream(self, request: bytes, context: grpc.ServicerContext) -> AsyncIterator[bytes]:
        self._enter()
        try:
            yield b"first"
            await self._hold()
        finally:
            self._leave()
        yield b"done"


@pytest.fixture
def served() -> Iterator[tuple[_Stubborn, _Counting, str]]:
    stubborn = _Stubborn()
    pool = _Counting(MAX_WORKERS + RESERVED)
    gate = HandlerGate(MAX_WORKERS)
    server = grpc.server(pool)
    try:
        yield stubborn, pool, _register(server, gate, stubborn)
    finally:
        stubborn.let_go.set()
        server.stop(0).wait(5)
        gate.close(within=5)
        pool.shutdown(wait=True)


def _register(server: grpc.Server, gate: HandlerGate, stubborn: _Stubborn) -> str:
    handlers = {"Hold": grpc.unary_unary_rpc_method_handler(stubborn.unary)}
    streams = {"Hold": grpc.unary_stream_rpc_method_handler(stubborn.stream)}
    gated = GatedServer(server, gate)
    gated.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", handlers),))
    gated.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.U", streams),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return f"127.0.0.1:{port}"


@pytest.mark.parametrize("kind", ["unary", "stream"])
def test_coroutines_ignoring_their_cancel_never_exceed_max_workers(
        served: tuple[_Stubborn, _Counting, str], kind: str) -> None:
    stubborn, pool, address = served
    path = "/t.S/Hold" if kind == "unary" else "/t.U/Hold"
    with grpc.insecure_channel(address) as channel:
        def cut() -> grpc.StatusCode:
            return _cut_path(channel, kind, path)

        assert [cut() for _ in range(MAX_WORKERS)] == [grpc.StatusCode.DEADLINE_EXCEEDED] * MAX_WORKERS
        assert wait_until(lambda: stubborn.running == MAX_WORKERS, BOUND)
        # the calls' threads gave up waiting for their coroutines, which run on
        assert wait_until(lambda: pool.busy == 0, BOUND), "the cut calls' threads still wait"
        assert stubborn.running == MAX_WORKERS
        more = [cut() for _ in range(MAX_WORKERS)]
        assert stubborn.peak <= MAX_WORKERS, f"{stubborn.peak} coroutines ran at once"
        assert more == [grpc.StatusCode.RESOURCE_EXHAUSTED] * MAX_WORKERS  # their slots are still held
        stubborn.let_go.set()  # the coroutines end: their slots come back
        assert wait_until(lambda: stubborn.running == 0, BOUND)
        assert wait_until(lambda: _answered(channel, kind, path), BOUND)


def _cut_path(channel: grpc.Channel, kind: str, path: str) -> grpc.StatusCode:
    try:
        if kind == "unary":
            channel.unary_unary(path)(b"", timeout=0.5)
        else:
            for _ in channel.unary_stream(path)(b"", timeout=0.5):
                pass
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _answered(channel: grpc.Channel, kind: str, path: str) -> bool:
    try:
        if kind == "unary":
            return channel.unary_unary(path)(b"", timeout=BOUND) == b"done"  # type: ignore[no-any-return]
        return list(channel.unary_stream(path)(b"", timeout=BOUND)) == [b"first", b"done"]
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:  # a slot not back yet: try again
            raise
        return False
