"""The asyncio rows: AsyncClient next to a bare grpc.aio host, both on the Go KV plugin.

The floor is the least an asyncio host can do (no plugbay at all): launch the
plugin with bench/floor.py's ``launch``, read its handshake line, open one
grpc.aio channel to its unix socket, time the same calls and ask Shutdown.
Each row, per round: start to the first call (a Put), then --calls Gets awaited
one after another (p50, p99), then --calls Gets from 16 tasks at once (calls/s,
the "16 tasks calls/s" figure). Plaintext only: AutoMTLS with a Go plugin
goes through the OpenSSL relay, which the sync rows measure.

A second floor row holds one more grpc.aio stream open on an event loop in
another thread while it calls (opened after its first call, so its start is
the floor's own work), as an AsyncClient's process does (plugbay's I/O
thread carries the plugin's broker and stdio streams on grpc.aio): grpc.aio
wakes every loop it is bound to for each completion, so a second loop costs
the calling one even when idle. That share of AsyncClient's distance is grpc's.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from common import Case, Context, Result, go_program, interleaved, percentile

TASKS = 16


async def _measure(put: Callable[[], Awaitable[Any]], get: Callable[[], Awaitable[Any]], calls: int,
                   started: float, before_calls: Callable[[], None] | None = None) -> Result:
    """The first call (a Put, timed from ``started``), then ``before_calls()`` untimed, then the timed Gets."""
    await put()
    first = time.perf_counter() - started
    if not calls:
        return Result(first * 1000)
    if before_calls is not None:
        before_calls()
    latencies = []
    t0 = time.perf_counter()
    for _ in range(calls):
        s = time.perf_counter()
        await get()
        latencies.append((time.perf_counter() - s) * 1e6)
    total = time.perf_counter() - t0
    latencies.sort()

    async def task(n: int) -> None:
        for _ in range(n):
            await get()

    t1 = time.perf_counter()
    await asyncio.gather(*(task(calls // TASKS) for _ in range(TASKS)))
    concurrent = (calls // TASKS) * TASKS / (time.perf_counter() - t1)
    return Result(first * 1000, percentile(latencies, 0.50), percentile(latencies, 0.99), calls,
                  calls / total if total else 0.0, metrics={f"{TASKS} tasks calls/s": concurrent})


def _second_loop(target: str) -> tuple[threading.Thread, threading.Event]:
    """A thread whose event loop holds a health Watch stream to ``target`` open until the event is set."""
    import grpc.aio

    from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc

    stop, watching = threading.Event(), threading.Event()

    async def hold() -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            await call.read()
            watching.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)
            call.cancel()

    thread = threading.Thread(target=lambda: asyncio.run(hold()), name="plugbay-bench-loop", daemon=True)
    thread.start()
    watching.wait(10)
    return thread, stop


def _bare_round(plugin: str, calls: int, cwd: str, timeout: float, second_loop: bool = False) -> Result:
    import grpc.aio
    from floor import ENV, end, launch
    from kvproto import kv_pb2, kv_pb2_grpc

    async def main() -> Result:
        started = time.perf_counter()
        proc, parts = launch([plugin], cwd, {**os.environ, **ENV})
        other: list[tuple[threading.Thread, threading.Event]] = []

        def hold_second_loop() -> None:  # after the first call: the row's start is the floor's own
            if second_loop:
                other.append(_second_loop(f"unix:{parts[3]}"))

        try:
            async with grpc.aio.insecure_channel(f"unix:{parts[3]}") as channel:
                stub = kv_pb2_grpc.KVStub(channel)
                result = await _measure(
                    lambda: stub.Put(kv_pb2.PutRequest(key="bench", value=b"value"), timeout=timeout),
                    lambda: stub.Get(kv_pb2.GetRequest(key="bench"), timeout=timeout), calls, started,
                    hold_second_loop)
                try:
                    await channel.unary_unary("/plugin.GRPCController/Shutdown")(b"", timeout=2)
                except grpc.RpcError:
                    pass
        finally:
            for thread, stop in other:
                stop.set()
                thread.join(10)
            end(proc, 5)
        result.note = "bare grpc.aio" + (", a second loop holding a stream" if second_loop else "")
        return result

    return asyncio.run(main())


def _plugbay_round(plugin: str, calls: int, cwd: str, timeout: float) -> Result:
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin

    from plugbay import AsyncClient, ClientConfig, ProcessRunner

    async def main() -> Result:
        started = time.perf_counter()
        config = ClientConfig(HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                              runner=ProcessRunner([plugin], cwd=cwd), call_timeout=timeout)
        async with AsyncClient(config) as client:
            kv = await client.dispense(PLUGIN_NAME)
            result = await _measure(lambda: kv.put("bench", b"value"), lambda: kv.get("bench"), calls, started)
            result.note = client.connection_mode
        return result

    return asyncio.run(main())


def cases(ctx: Context) -> list[Case]:
    def row(kind: str) -> Callable[[Context], Result]:
        def run(c: Context) -> Result:
            plugin = go_program(c, "kv_plugin")
            if plugin is None:
                return Result(skipped=f"Go: {c.cache.get('go:reason')}")
            with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
                def floor(calls: int) -> Result:
                    return _bare_round(plugin, calls, cwd, c.call_timeout)
                if kind == "floor":
                    return interleaved(c, floor)
                if kind == "two loops":
                    return interleaved(c, lambda calls: _bare_round(plugin, calls, cwd, c.call_timeout, True), floor)
                return interleaved(c, lambda calls: _plugbay_round(plugin, calls, cwd, c.call_timeout), floor)
        return run

    return [Case("bare grpc.aio", "Go", False, row("floor"), area="async", key="floor-aio"),
            Case("bare grpc.aio + a 2nd loop", "Go", False, row("two loops"), area="async", floor="floor-aio"),
            Case("Python (AsyncClient)", "Go", False, row("plugbay"), area="async", floor="floor-aio")]


if __name__ == "__main__":
    sys.exit(__import__("run").main(["--only", "async", *sys.argv[1:]]))
