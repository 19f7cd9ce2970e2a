"""plugbay's benchmark: start-to-first-call and unary latency, plugbay next to go-plugin itself.

    python bench/run.py                      # every row, 3 rounds x 500 calls each
    python bench/run.py --calls 2000 --rounds 5
    python bench/run.py --only core --json   # one area; JSON lines instead of the table
    python bench/run.py --only faults --faults 100   # 100 injections per fault type

Rows come from every ``bench/bench_<area>.py`` module (``cases(ctx) -> list[Case]``),
so other areas (docker, kubernetes, broker, ...) add a module and appear here.
A module may also define ``extra_report(ctx, progress) -> (table, rows)``: its own
table, printed below the main one (bench_faults: one row per fault type).
Every loop is bounded by --calls, --rounds and --faults.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import platform
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import Case, Context, Result  # noqa: E402


def discover(only: list[str]) -> list[tuple[str, object]]:
    modules = []
    for path in sorted(HERE.glob("bench_*.py")):
        area = path.stem.removeprefix("bench_")
        if only and area not in only:
            continue
        modules.append((area, importlib.import_module(path.stem)))
    # the core rows first: the reference the other areas compare against
    return sorted(modules, key=lambda m: (m[0] != "core", m[0]))


def run_case(case: Case, ctx: Context) -> Result:
    try:
        return case.run(ctx)
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        return Result(skipped=f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")


def machine() -> str:
    """nproc, CPU model, load, Python and grpcio versions: what a figure depends on."""
    import os

    import grpc

    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return (f"{os.cpu_count()} CPUs ({model}), load {load:.1f}; Python {platform.python_version()}"
            f" {platform.machine()}, grpcio {grpc.__version__}")


def ratios(case: Case, result: Result, rows: list[tuple[Case, Result]]) -> str:
    """plugbay / floor for each figure both rows have ("floor" on a reference row itself).

    Latencies, threads and RSS: above 1 is worse; calls/s: below 1 is worse.
    Start-to-first-call also shows the difference in ms (the targets are stated that way).
    """
    if not case.floor:
        return "floor" if case.key else ""
    floor = next((r for c, r in rows if c.key == case.floor), None)
    if floor is None or floor.skipped or result.skipped:
        return "-"
    out = []
    # the floor's starts taken between this row's (if it took them), else the floor row's own
    floor_start = result.floor_start_ms or floor.start_to_first_call_ms
    if result.start_to_first_call_ms and floor_start:
        # where each start had its floor's just before it, the medians of the pairs' own figures
        start_x = result.pair_ratios.get("start") or result.start_to_first_call_ms / floor_start
        diff = result.start_to_first_call_ms - floor_start if result.pair_start_ms is None else result.pair_start_ms
        out.append(f"start {diff:+.{0 if abs(diff) >= 10 else 1}f}ms {start_x:.2f}x")
    # the floor's rounds taken between this row's (if it took them), else the floor row's own
    pairs = [("p50", result.p50_us, result.floor_p50_us or floor.p50_us),
             ("p99", result.p99_us, result.floor_p99_us or floor.p99_us),
             ("calls/s", result.calls_per_s, result.floor_calls_per_s or floor.calls_per_s)]
    pairs += [(k, v, result.floor_metrics.get(k) or floor.metrics[k]) for k, v in result.metrics.items()
              if k in result.floor_metrics or k in floor.metrics]
    # where the row took paired floor rounds, the median of the pairs' own ratios (common.Context.pairs)
    out += [f"{name} {result.pair_ratios.get(name, mine / ref):.2f}x" for name, mine, ref in pairs if mine and ref]
    return ", ".join(out) + (f" ({result.pairs} pairs)" if result.pairs else "")


def table(rows: list[tuple[Case, Result]]) -> str:
    head = ["area", "host -> plugin", "transport", "AutoMTLS", "start->1st call ms", "p50 us", "p99 us",
            "calls/s", "plugbay / floor", "note"]
    lines = [head]
    for case, r in rows:
        if r.skipped:
            lines.append([case.area, case.label, case.transport, "yes" if case.automtls else "no",
                          "-", "-", "-", "-", "-", r.skipped])
        else:
            note = "; ".join([f"{k} {v:.1f}" for k, v in r.metrics.items()] + ([r.note] if r.note else []))
            lines.append([case.area, case.label, case.transport, "yes" if case.automtls else "no",
                          f"{r.start_to_first_call_ms:.1f}" if r.start_to_first_call_ms else "-",
                          f"{r.p50_us:.0f}" if r.p50_us else "-",
                          f"{r.p99_us:.0f}" if r.p99_us else "-",
                          f"{r.calls_per_s:.0f}" if r.calls_per_s else "-", ratios(case, r, rows), note])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = []
    for n, row in enumerate(lines):
        out.append("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500, help="unary calls timed per round (default 500)")
    parser.add_argument("--rounds", type=int, default=3, help="plugin starts per row that time --calls calls"
                        " (default 3)")
    parser.add_argument("--starts", type=int, default=9,
                        help="plugin starts per row for start->1st call, the rounds included (default 9;"
                             " the extra ones are start-only; the core, docker, async and network pool rows)")
    parser.add_argument("--pairs", type=int, default=8,
                        help="timed rounds of a row whose floor runs between its own (default 8): its ratio"
                             " column is the median of the pairs' ratios")
    parser.add_argument("--only", action="append", default=[], help="run only this area (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per row")
    parser.add_argument("--faults", type=int, default=2,
                        help="fault injections per fault type (default 2; bench/bench_faults.py --total 1000"
                             " runs at least 1,000)")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.rounds < 1 or args.calls > 1_000_000 or args.rounds > 100:
        parser.error("--calls must be 1..1000000 and --rounds 1..100")
    if not 1 <= args.starts <= 100:
        parser.error("--starts must be 1..100")
    if not 1 <= args.pairs <= 100:
        parser.error("--pairs must be 1..100")
    if not 1 <= args.faults <= 10000:
        parser.error("--faults must be 1..10000")
    logging.basicConfig(level=logging.ERROR)
    # Byte-compile like an installed package (pip writes .pyc files): with PYTHONDONTWRITEBYTECODE
    # set, every plugin start would otherwise compile plugbay's sources and time that, not plugbay.
    import compileall

    for tree in ("src", "examples", "bench"):
        compileall.compile_dir(str(HERE.parent / tree), quiet=2)
    ctx = Context(calls=args.calls, rounds=args.rounds, faults=args.faults, starts=args.starts, pairs=args.pairs)
    rows: list[tuple[Case, Result]] = []
    extras: list[str] = []
    failed_extra = False
    started = time.monotonic()
    modules = discover(args.only)
    for area, module in modules:
        for case in module.cases(ctx):  # type: ignore[attr-defined]
            case.area = area
            print(f"running {area}: {case.label}{' (AutoMTLS)' if case.automtls else ''} ...",
                  file=sys.stderr, flush=True)
            result = run_case(case, ctx)
            rows.append((case, result))
            if args.json:
                print(json.dumps({"area": area, "host": case.host, "plugin": case.plugin,
                                  "transport": case.transport, "automtls": case.automtls,
                                  "vs_floor": ratios(case, result, rows), **result.__dict__}), flush=True)
    for area, module in modules:
        report = getattr(module, "extra_report", None)
        if report is None:
            continue
        try:
            text, extra_rows = report(ctx, lambda line: print(line, file=sys.stderr, flush=True))
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            text, extra_rows = f"{area}: FAILED: {type(exc).__name__}: {exc}", []
            failed_extra = True
        failed_extra = failed_extra or any(str(r.get("skipped", "")).startswith("FAILED") for r in extra_rows)
        extras.append(text)
        if args.json:
            for extra in extra_rows:
                print(json.dumps({"area": area, "table": "extra", **extra}), flush=True)
    if not args.json:
        print(f"\nplugbay bench: {args.rounds} rounds x {args.calls} unary calls per row,"
              f" start->1st call over max({args.rounds}, {args.starts}) starts (core, docker, async and network"
              " pool rows; the others over their rounds);"
              f" {machine()}; took {time.monotonic() - started:.0f}s\n")
        print(table(rows))
        print("\nstart->1st call: launch, handshake, connect and one Put (median of the starts; plugbay's"
              " Client also makes its health check there, bare grpcio floors and go-plugin's Go host make"
              " none); p50/p99: the row's timed calls, one by one (Get round trips unless its note says"
              " otherwise); start, p50 and calls/s are medians of the rounds, p99 the highest round's;"
              " relay-tls = OpenSSL relay for a Go peer's P-521 cert; plugbay / floor: this row's figures over"
              " its bare-grpcio reference row's (same run; where the row took its floor's rounds between its"
              f" own, max({args.rounds}, {args.pairs}) pairs of a floor round and a row round, its p50, p99"
              " and calls/s ratios are the medians of the pairs' own ratios, as is its start ratio where each"
              " start had its floor's just before it, and its start difference in ms; the Go host -> Python"
              " plugin rows' pairs are each one Go host run that starts both plugins, each first in half the"
              " runs, and times their Gets in blocks, turns a b | b a, after a warm-up block each: their ratios"
              " are against the bare plugin of those runs, whose figures their note gives, not against the"
              " Go host -> bare grpcio plugin row, which runs it alone).")
        for text in extras:
            print("\n" + text)
    return 1 if failed_extra or any((r.skipped or "").startswith("FAILED") for _, r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
