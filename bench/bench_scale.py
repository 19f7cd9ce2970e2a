"""The scale rows: concurrent callers on one connection, and what each live plugin costs the host.

Concurrency: 1, 4 and 16 threads share one plugbay Client (Python host -> Go KV
plugin), each making --calls Gets; calls/s is the total. The floor is the same
threads on one bare grpcio channel (bench/floor.py) to the same Go plugin. The
floor's rounds alternate with plugbay's (which goes first swaps each round), so a
shared machine's drifting load hits both alike: max(5, --rounds) of each; the floor
row reports those rounds, the plugbay row's ratio is taken against them, and its note
gives each pair's calls/s ratio and their median.

Per live plugin: 1, 10 and 50 Go KV plugins live at once on the process runner
(bench/scale_probe.py, a fresh process per figure); the note gives the Python
threads, OS threads and RSS the host gained per plugin. The floor is the bare
grpcio host holding as many plugins. One round per row (starting 50 plugins is
the expensive part).

    python bench/bench_scale.py --calls 300                 # every scale row
    python bench/bench_scale.py --calls 300 --concurrency   # only the concurrency rows
"""

from __future__ import annotations

import json
import statistics
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


def _round(ctx: Context, plugin: str, cwd: str, threads: int, bare: bool) -> Result:
    """Start the plugin (bare grpcio or a plugbay Client), Put once, then ``threads`` callers."""
    from floor import BareKV
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin

    from plugbay import Client, ClientConfig, ProcessRunner

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
    return Result(first, percentile(lat, 0.5), percentile(lat, 0.99), len(lat),
                  len(lat) / took if took else 0.0, note=note)


def _alternating(ctx: Context, threads: int) -> tuple[list[Result], list[Result]] | str:
    """max(5, ctx.rounds) floor rounds and as many plugbay rounds, alternating (floor first, then plugbay
    first, ...); made once for both rows of ``threads`` callers. A str: why they were skipped.
    Five at least: a round of many callers on a shared 2-CPU machine swings by a third either way."""
    key = f"scale:conc-{threads}"
    if key not in ctx.cache:
        plugin = go_program(ctx, "kv_plugin")
        if plugin is None:
            ctx.cache[key] = f"Go: {ctx.cache.get('go:reason')}"
        else:
            floor: list[Result] = []
            mine: list[Result] = []
            with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
                for n in range(max(5, ctx.rounds)):
                    for bare in (True, False) if n % 2 == 0 else (False, True):
                        (floor if bare else mine).append(_round(ctx, plugin, cwd, threads, bare))
            ctx.cache[key] = (floor, mine)
    got: tuple[list[Result], list[Result]] | str = ctx.cache[key]
    return got


def _concurrent(ctx: Context, threads: int, bare: bool) -> Result:
    got = _alternating(ctx, threads)
    if isinstance(got, str):
        return Result(skipped=got)
    floor, mine = got
    if bare:
        result = combine(floor)
        result.note += "; rounds alternating with the plugbay row's"
        return result
    result = combine(mine, floor_rounds=floor)
    pairs = [m.calls_per_s / f.calls_per_s for m, f in zip(mine, floor) if f.calls_per_s]
    shown = ", ".join(f"{x:.2f}" for x in pairs)
    median = f", median {statistics.median(pairs):.2f}" if pairs else ""
    result.note += f"; ratio against the floor's rounds alternating with these (calls/s x per pair: {shown}{median})"
    return result


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


# set by ``bench_scale.py --concurrency``: only the concurrency rows (the live-plugin rows take minutes)
CONCURRENCY_ONLY = False


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
    for plugins in () if CONCURRENCY_ONLY else (1, 10, 50):
        for bare in (True, False):
            def run(c: Context, n: int = plugins, b: bool = bare) -> Result:
                return _per_plugin(c, n, b)

            key = f"floor-live-{plugins}"
            out.append(Case("bare grpcio" if bare else "Python", "Go", False, run, area="scale",
                            transport=f"process, unix, {plugins} live plugins",
                            key=key if bare else "", floor="" if bare else key))
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--concurrency" in args:
        args.remove("--concurrency")
        # run.py imports this file again as the module bench_scale: set it there
        __import__("bench_scale").CONCURRENCY_ONLY = True
    sys.exit(__import__("run").main(["--only", "scale", *args]))
