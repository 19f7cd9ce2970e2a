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
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

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


def _tree(spec: str, scratch: str, side: str) -> str:
    if (Path(spec) / "src" / "plugbay").is_dir() and (Path(spec) / "examples").is_dir():
        return str(Path(spec).resolve())
    out = os.path.join(scratch, side)  # a folder per side: an A/A run exports the revision twice
    os.makedirs(out)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", spec, "src", "examples"],
                             capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", out], input=archive.stdout, check=True)
    return out


def _run(tree: str, plugin: str, calls: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.path.join(tree, "src")}
    cmd = [sys.executable, __file__, "--round", tree, "--go-plugin", plugin, "--calls", str(calls)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"a round of {tree} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


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
    scratch = tempfile.mkdtemp(prefix="plugbay-aio-ab-")
    try:
        trees = {side: _tree(spec, scratch, side) for side, spec in (("old", args.old), ("new", args.new))}
        got: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
        for n in range(args.pairs):
            for side in ("old", "new") if n % 2 == 0 else ("new", "old"):
                got[side].append(_run(trees[side], plugin, args.calls))
            print(f"pair {n + 1}: " + "  ".join(f"{f} {got['old'][-1][f]:.0f}/{got['new'][-1][f]:.0f}"
                                                for f in FIGURES), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    summary = {}
    for f in FIGURES:
        ratios = sorted(new[f] / old[f] for old, new in zip(got["old"], got["new"]))
        better = sum((r > 1) if f in HIGHER_IS_BETTER else (r < 1) for r in ratios)
        summary[f] = {"old": statistics.median(r[f] for r in got["old"]),
                      "new": statistics.median(r[f] for r in got["new"]),
                      "ratio": round(statistics.median(ratios), 3),
                      "range": [round(ratios[0], 3), round(ratios[-1], 3)],
                      "new_better": better}
        print(f"{f:16} old {summary[f]['old']:8.0f}  new {summary[f]['new']:8.0f}  new/old median"
              f" {summary[f]['ratio']:.3f} [{ratios[0]:.3f}..{ratios[-1]:.3f}], new better in {better}/{len(ratios)}")
    print(json.dumps({"pairs": args.pairs, "calls": args.calls, "load": round(os.getloadavg()[0], 1),
                      "figures": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
