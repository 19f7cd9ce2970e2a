"""Interleaved A/B of bench_async's AsyncClient row (Python host -> Go KV plugin) between two checkouts.

    python bench/aio_ab.py OLD NEW --pairs 10 --calls 2000

OLD and NEW are source trees (folders holding src/plugbay and examples) or git revisions of this
checkout (exported to a temporary folder), as in bench/broker_ab.py. Each round runs bench_async's
own row code (_plugbay_round: a fresh AsyncClient and Go KV plugin, a Put, ``--calls`` Gets awaited
one after another, then as many from 16 tasks) in a new process whose plugbay is that tree's; the
timing code and the Go plugin are this checkout's. Rounds alternate, the order flipping every pair,
so the drift of a shared machine's load hits both alike. Prints, per figure, each side's median, the
median of the pairs' NEW/OLD ratios with their range, and in how many pairs NEW was lower (for
calls/s: higher). An A/A run (one tree twice) shows the spread to expect: trust only what clearly
exceeds it. Every loop is bounded by --pairs and --calls.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from ab_pairs import interleaved, run_round, summarise

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
FIGURES = ("p50 us", "p99 us", "calls/s", "16 tasks calls/s")
HIGHER_IS_BETTER = {"calls/s", "16 tasks calls/s"}


def _round(tree: str, plugin: str, calls: int) -> dict[str, float]:
    """One round in this process, whose sys.path starts with ``tree``'s src (see main)."""
    import plugbay  # the tree's, before bench/common.py puts this checkout's src on the path

    assert Path(plugbay.__file__).resolve().is_relative_to(Path(tree).resolve()), plugbay.__file__
    sys.path.insert(0, str(BENCH))
    import bench_async

    with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
        result = bench_async._plugbay_round(plugin, calls, cwd, 30.0)
    return dict(zip(FIGURES, (result.p50_us, result.p99_us, result.calls_per_s,
                              result.metrics[f"{bench_async.TASKS} tasks calls/s"])))


def _run(tree: str, plugin: str, calls: int) -> dict[str, float]:
    return run_round(__file__, tree, ["--go-plugin", plugin, "--calls", str(calls)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", nargs="?")
    parser.add_argument("new", nargs="?")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--go-plugin", help=argparse.SUPPRESS)  # internal: the built Go plugin
    parser.add_argument("--round", help=argparse.SUPPRESS)  # internal: one round of this tree
    args = parser.parse_args()
    if not (16 <= args.calls <= 100_000 and 1 <= args.pairs <= 200):
        parser.error("need 16 <= --calls <= 100000 and 1 <= --pairs <= 200")
    if args.round:
        print(json.dumps(_round(args.round, args.go_plugin, args.calls)))
        return 0
    if not (args.old and args.new):
        parser.error("give OLD and NEW")
    sys.path.insert(0, str(REPO))
    from tests import gobuild

    reason = gobuild.go_missing_reason()
    if reason:
        raise SystemExit(f"no Go plugin: {reason}")
    plugin = str(gobuild.build_go("kv_plugin"))
    got = interleaved(args.old, args.new, args.pairs, "plugbay-aio-ab-", FIGURES,
                      lambda tree: _run(tree, plugin, args.calls))
    summary = summarise(got, FIGURES, 16, "better", HIGHER_IS_BETTER)
    print(json.dumps({"pairs": args.pairs, "calls": args.calls, "load": round(os.getloadavg()[0], 1),
                      "figures": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
