"""Interleaved A/B of the broker rows (bench_broker's Python host -> Python plugin) between two checkouts.

    python bench/broker_ab.py OLD NEW --multiplex --pairs 12 --calls 300 [--automtls] [--go]

OLD and NEW are source trees (folders holding src/plugbay and examples) or git revisions of this
checkout (exported to a temporary folder). Each round runs bench_broker's own row code
(_python_host: a fresh host and counter plugin, ``--calls`` timed Puts with a brokered
callback, as many Gets, a 128 MiB stream) in a new process whose plugbay and plugins
(examples/counter, examples/streaming) are that tree's; the timing code is this checkout's. Rounds
alternate, the order flipping every pair, so the drift of a shared machine's load hits
both alike. Prints, per figure, each side's median, the median of the pairs' NEW/OLD
ratios with their range, and in how many pairs NEW was lower. An A/A run (one tree
twice) shows the spread to expect: trust only what clearly exceeds it. ``--go``: the plugin is
go-plugin's Go counter (tests/go/counter_plugin, built once by this checkout's tests.gobuild; per-connection,
no stream figure).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from ab_pairs import interleaved, run_round, summarise

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
FIGURES = ("p50 us", "p99 us", "Get p50 us", "stream MB/s")


def _round(tree: str, calls: int, multiplex: bool, automtls: bool, go: str = "") -> dict[str, float]:
    """One round in this process, whose sys.path starts with ``tree``'s src (see main)."""
    import plugbay  # the tree's, before bench/common.py puts this checkout's src on the path

    assert Path(plugbay.__file__).resolve().is_relative_to(Path(tree).resolve()), plugbay.__file__
    sys.path.insert(0, str(BENCH))
    import bench_broker
    from common import Context

    # the plugins are the tree's own examples: an example puts its checkout's src first on its path
    bench_broker.PY_COUNTER = [sys.executable, os.path.join(tree, "examples", "counter", "plugin.py")]
    bench_broker.PY_STREAMER = [sys.executable, os.path.join(tree, "examples", "streaming", "plugin.py")]
    ctx = Context(calls=calls, rounds=1, starts=1)
    result = bench_broker._python_host(ctx, [go] if go else bench_broker.PY_COUNTER, automtls, multiplex)
    get = re.search(r"plain Get p50 (\d+) us", result.note)
    stream = re.search(r"stream (\d+) MB/s", result.note)
    assert get is not None and (go or stream is not None), result.note
    return dict(zip(FIGURES, (result.p50_us, result.p99_us, float(get[1]), float(stream[1]) if stream else 1.0)))


def _run(tree: str, args: argparse.Namespace) -> dict[str, float]:
    options = ["--calls", str(args.calls)] + ["--multiplex"] * args.multiplex + ["--automtls"] * args.automtls
    options += ["--go-plugin", args.go_plugin] if args.go_plugin else []
    return run_round(__file__, tree, options)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", nargs="?")
    parser.add_argument("new", nargs="?")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--multiplex", action="store_true")
    parser.add_argument("--automtls", action="store_true")
    parser.add_argument("--go", action="store_true", help="go-plugin's Go counter plugin (per-connection)")
    parser.add_argument("--go-plugin", help=argparse.SUPPRESS)  # internal: the built Go plugin
    parser.add_argument("--round", help=argparse.SUPPRESS)  # internal: one round of this tree
    args = parser.parse_args()
    if not (1 <= args.calls <= 100_000 and 1 <= args.pairs <= 200):
        parser.error("need 1 <= --calls <= 100000 and 1 <= --pairs <= 200")
    if args.round:
        print(json.dumps(_round(args.round, args.calls, args.multiplex, args.automtls, args.go_plugin or "")))
        return 0
    if not (args.old and args.new):
        parser.error("give OLD and NEW")
    if args.go:
        if args.multiplex:
            parser.error("go-plugin 1.0.1's counter plugin brokers per-connection only: drop --multiplex")
        sys.path.insert(0, str(REPO))
        from tests import gobuild

        reason = gobuild.go_missing_reason()
        if reason:
            raise SystemExit(f"--go: {reason}")
        args.go_plugin = str(gobuild.build_go("counter_plugin"))
    got = interleaved(args.old, args.new, args.pairs, "plugbay-broker-ab-", FIGURES, lambda tree: _run(tree, args))
    summary = summarise(got, FIGURES, 12, "lower")
    print(json.dumps({"pairs": args.pairs, "calls": args.calls, "multiplex": args.multiplex, "go": args.go,
                      "automtls": args.automtls, "figures": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
