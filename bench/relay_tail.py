"""Where the relay row's p99 goes: each round's p99 with and without the calls a start and the Go GC slow down.

    python bench/relay_tail.py --rounds 12 --calls 300

Python host -> Go KV plugin, plaintext then AutoMTLS (the OpenSSL relay) per
round, as in relay_rows.py (the same Put, then --calls timed Gets). The plugin
runs with GODEBUG=gctrace=1, so each of its garbage collections sends a line
when it ends; each round prints the p99 of

* ``all``: every Get (what the bench row takes);
* ``late``: without the first --early Gets (the Client's second connection,
  for the broker stream and stdio, starts when the first call returns; through
  the relay it takes a full P-521 TLS handshake on the loop thread and in the
  plugin);
* ``quiet``: ``late`` without the Gets under way in the --gc-window ms before
  a GC line arrived (the GC, ~1-3 ms, and its line's trip through the stderr
  pipe, which may rest 5 ms between reads: plugbay.runners.procio).

The last line gives each column's median and the medians of the per-round
relay-tls / plaintext ratios. Found in the session that made it (7 runs of 12
rounds x 300 Gets, load 1.8-4.1, the median of the runs' medians): ratios all
2.47x, late 1.67x, quiet 1.54x; p50 1.50x. The plugin's first GC came at Get
~290 with AutoMTLS (its two handshakes and its TLS records allocate) and at
Get ~420 in plaintext: inside a 300-Get round only with AutoMTLS, while over
3000 Gets both modes had one every 410-510 Gets. Every loop is bounded by
--rounds and --calls.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Context, go_program, percentile


def _round(plugin: str, cwd: str, tls: bool, calls: int, early: int, window: float) -> dict[str, float]:
    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin

    from plugbay import Client, ClientConfig, ProcessRunner

    gc_lines: list[float] = []  # arrival times of the plugin's GC lines

    def sink(line: str) -> None:
        if line.startswith("gc "):
            gc_lines.append(time.perf_counter())

    config = ClientConfig(HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, auto_mtls=tls, raw_log_sink=sink,
                          runner=ProcessRunner([plugin], cwd=cwd, env={"GODEBUG": "gctrace=1"}))
    timed: list[tuple[float, float, float]] = []  # (start, end, us)
    with Client(config) as client:
        kv = client.dispense(PLUGIN_NAME)
        kv.put("bench", b"value")
        for _ in range(calls):
            started = time.perf_counter()
            kv.get("bench")
            ended = time.perf_counter()
            timed.append((started, ended, (ended - started) * 1e6))
    gcs = list(gc_lines)

    def p99(values: list[float]) -> float:
        return percentile(sorted(values), 0.99) if values else 0.0

    late = timed[early:]
    quiet = [t for t in late if not any(line - window <= t[1] and t[0] <= line for line in gcs)]
    return {"p50": percentile(sorted(t[2] for t in timed), 0.5), "all": p99([t[2] for t in timed]),
            "late": p99([t[2] for t in late]), "quiet": p99([t[2] for t in quiet]),
            "gcs": float(sum(1 for line in gcs if timed and line >= timed[0][0]))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--early", type=int, default=3, help="Gets after the Put left out of 'late' and 'quiet'")
    parser.add_argument("--gc-window", type=float, default=10.0, help="ms before a GC line's arrival")
    args = parser.parse_args()
    if not (1 <= args.rounds <= 50 and 1 <= args.calls <= 100_000 and 0 <= args.early < args.calls
            and 0 <= args.gc_window <= 1000):
        parser.error("--rounds 1..50, --calls 1..100000, --early 0..calls-1, --gc-window 0..1000")
    logging.basicConfig(level=logging.ERROR)
    ctx = Context(calls=args.calls, rounds=args.rounds)
    plugin = go_program(ctx, "kv_plugin")
    if plugin is None:
        raise SystemExit(f"no Go plugin: {ctx.cache.get('go:reason')}")
    cwd = tempfile.mkdtemp(prefix="plugbay-bench-")
    atexit.register(shutil.rmtree, cwd, True)  # the plugin's kv_* files
    lines: list[dict[str, float]] = []
    for _ in range(args.rounds):
        plain, relay = (_round(plugin, cwd, tls, args.calls, args.early, args.gc_window / 1000)
                        for tls in (False, True))
        line = {**{f"plain {k}": v for k, v in plain.items()}, **{f"relay {k}": v for k, v in relay.items()},
                **{f"{k} x": relay[k] / plain[k] for k in ("p50", "all", "late", "quiet") if plain[k]},
                "load": os.getloadavg()[0]}
        lines.append(line)
        print(json.dumps({k: round(v, 2) for k, v in line.items()}), flush=True)
    print(json.dumps({"median": {k: round(statistics.median(x[k] for x in lines if k in x), 2) for k in lines[0]}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
