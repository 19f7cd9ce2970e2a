"""The scale rows: concurrent callers on one connection, and what each live plugin costs the host.

Concurrency: 1, 4 and 16 threads share one plugbay Client (Python host -> Go KV
plugin), each making --calls Gets; calls/s is the total. The floor is the same
threads on one bare grpcio channel (bench/floor.py) to the same Go plugin.

Per live plugin: 1, 10 and 50 Go KV plugins live at once on the process runner
(bench/scale_probe.py, a fresh process per figure); the note gives the Python
threads, OS threads and RSS the host gained per plugin. The floor is the bare
grpcio host holding as many plugins. One round per row (starting 50 plugins is
the expensive part).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from common import REPO, Case, Context, Result, combine, go_program, percentile


def _hammer(kv: Any, threads: int, calls: int) -> tuple[list[float], float]:
    """``threads`` threads each make ``calls`` Gets: all latencies (us, sorted) and the wall time."""
    latencies: list[float] = []
    lock = threading.Lock()
    go = threading.Barrier(threads + 1)

    def worker() -> None:
        mine = []
        go.wait()
        for _ in range(calls):
            s = time.perf_counter()
            kv.get("bench")
            mine.append((time.perf_counter() - s) * 1e6)
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=worker, name=f"plugbay-bench-{i}") for i in range(threads)]
    for t in pool:
        t.start()
    go.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    took = time.perf_counter() - t0
    latencies.sort()
    return latencies, took


def _concurrent(ctx: Context, threads: int, bare: bool) -> Result:
    plugin = go_program(ctx, "kv_plugin")
    if plugin is None:
        return Result(skipped=f"Go: {ctx.cache.get('go:reason')}")
    from floor import BareKV
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin

    from plugbay import Client, ClientConfig, ProcessRunner

    rounds = []
    with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
        for _ in range(ctx.rounds):
            started = time.perf_counter()
            client: Any = (BareKV([plugin], cwd, ctx.call_timeout) if bare else
                           Client(ClientConfig(HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()},
                                               runner=ProcessRunner([plugin], cwd=cwd),
                                               call_timeout=ctx.call_timeout)))
            with client:
                kv = client if bare else client.dispense(PLUGIN_NAME)
                kv.put("bench", b"value")
                first = (time.perf_counter() - started) * 1000
                lat, took = _hammer(kv, threads, ctx.calls)
            note = f"{threads} caller thread{'s' if threads > 1 else ''}, one connection"
            rounds.append(Result(first, percentile(lat, 0.5), percentile(lat, 0.99), len(lat),
                                 len(lat) / took if took else 0.0, note=note))
    return combine(rounds)


def _per_plugin(ctx: Context, plugins: int, bare: bool) -> Result:
    plugin = go_program(ctx, "kv_plugin")
    if plugin is None:
        return Result(skipped=f"Go: {ctx.cache.get('go:reason')}")
    with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
        out = subprocess.run([sys.executable, str(REPO / "bench" / "scale_probe.py"),
                              "floor" if bare else "plugbay", str(plugins), plugin, cwd],
                             capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise RuntimeError(f"scale_probe failed ({out.returncode}): {out.stdout[-500:]}{out.stderr[-1500:]}")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return Result(data["start_ms"], note=f"{plugins} live plugins", metrics={
        "py threads/plugin": data["py_threads"], "OS threads/plugin": data["os_threads"],
        "RSS KiB/plugin": data["rss_kib"]})


def cases(ctx: Context) -> list[Case]:
    out: list[Case] = []
    for threads in (1, 4, 16):
        for bare in (True, False):
            def run(c: Context, t: int = threads, b: bool = bare) -> Result:
                return _concurrent(c, t, b)

            key = f"floor-conc-{threads}"
            out.append(Case("bare grpcio" if bare else "Python", "Go", False, run, area="scale",
                            transport=f"process, unix, {threads} caller{'s' if threads > 1 else ''}",
                            key=key if bare else "", floor="" if bare else key))
    for plugins in (1, 10, 50):
        for bare in (True, False):
            def run(c: Context, n: int = plugins, b: bool = bare) -> Result:
                return _per_plugin(c, n, b)

            key = f"floor-live-{plugins}"
            out.append(Case("bare grpcio" if bare else "Python", "Go", False, run, area="scale",
                            transport=f"process, unix, {plugins} live plugins",
                            key=key if bare else "", floor="" if bare else key))
    return out


if __name__ == "__main__":
    sys.exit(__import__("run").main(["--only", "scale", *sys.argv[1:]]))
