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


def table(rows: list[tuple[Case, Result]]) -> str:
    head = ["area", "host -> plugin", "transport", "AutoMTLS", "start->1st call ms", "p50 us", "p99 us",
            "calls/s", "note"]
    lines = [head]
    for case, r in rows:
        if r.skipped:
            lines.append([case.area, case.label, case.transport, "yes" if case.automtls else "no",
                          "-", "-", "-", "-", r.skipped])
        else:
            lines.append([case.area, case.label, case.transport, "yes" if case.automtls else "no",
                          f"{r.start_to_first_call_ms:.1f}", f"{r.p50_us:.0f}", f"{r.p99_us:.0f}",
                          f"{r.calls_per_s:.0f}", r.note])
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
    parser.add_argument("--rounds", type=int, default=3, help="plugin starts per row (default 3)")
    parser.add_argument("--only", action="append", default=[], help="run only this area (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per row")
    parser.add_argument("--faults", type=int, default=2,
                        help="fault injections per fault type (default 2; bench/bench_faults.py --total 1000"
                             " runs at least 1,000)")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.rounds < 1 or args.calls > 1_000_000 or args.rounds > 100:
        parser.error("--calls must be 1..1000000 and --rounds 1..100")
    if not 1 <= args.faults <= 10000:
        parser.error("--faults must be 1..10000")
    logging.basicConfig(level=logging.ERROR)
    ctx = Context(calls=args.calls, rounds=args.rounds, faults=args.faults)
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
                                  **result.__dict__}), flush=True)
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
        print(f"\nplugbay bench: {args.rounds} rounds x {args.calls} unary calls per row; Python"
              f" {platform.python_version()}, {platform.machine()}; took {time.monotonic() - started:.0f}s\n")
        print(table(rows))
        print("\nstart->1st call: launch, handshake, connect, health check and one Put (median of the"
              " rounds); p50/p99: Get round trips; relay-tls = OpenSSL relay for a Go peer's P-521 cert.")
        for text in extras:
            print("\n" + text)
    return 1 if failed_extra or any((r.skipped or "").startswith("FAILED") for _, r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
