"""The fault rows: inject faults of every type, report recovery; and the circuit breaker's fast-fail.

    python bench/run.py --only faults --faults 3        # 3 injections per fault type
    python bench/bench_faults.py --total 1000           # at least 1,000 injections in all
    python bench/bench_faults.py --size 20 --only kill9-python --only sigstop

The injectors and the runner are the fault suite's own (tests/faults): every
injection yields a record (fault type, recovered, fault -> first successful
call, hung calls, untyped errors, leaks, lost writes). run.py's main table
gets one row (the open circuit's fast-fail latency); the fault table is
printed below it. Every loop is bounded by the size given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from common import REPO, Case, Context, Result, percentile, timed

FAULT_TYPES = ["kill9-python", "kill9-go", "sigstop", "hang", "docker-kill", "docker-pause", "net-blackhole",
               "net-latency", "net-reset", "pod-delete", "host-kill"]
HEAD = ["fault", "faults", "recovered", "recovery p50 ms", "recovery p99 ms", "hung calls", "untyped errors",
        "non-RpcError errors", "leaks", "lost writes", "restarts", "note"]


@contextlib.contextmanager
def private_tmp() -> Iterator[Path]:
    """A TMPDIR of our own, so the temp-entry leak check sees only what this run makes."""
    folder = Path(tempfile.mkdtemp(prefix="plugbay-bench-faults-"))
    old_env, old_dir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = str(folder), str(folder)
    try:
        yield folder
    finally:
        if old_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_env
        tempfile.tempdir = old_dir
        shutil.rmtree(folder, ignore_errors=True)


def run_faults(size: int, only: list[str] | None = None, progress: Callable[[str], None] = lambda line: None,
               total: int = 0) -> list[dict[str, Any]]:
    """One summary row per fault type: ``size`` injections each, topped up on the fault types
    that can run here until at least ``total`` injections were made (bounded: 10 rounds)."""
    kinds = only or FAULT_TYPES
    records: dict[str, list[Any]] = {name: [] for name in kinds}
    skipped: dict[str, str] = {}
    per_type = size
    for _ in range(10):
        for name in kinds:
            if name not in skipped:
                _inject(name, per_type, records[name], skipped, progress)
        made = sum(len(r) for r in records.values())
        able = [n for n in kinds if n not in skipped]
        if made >= total or not able:
            break
        per_type = math.ceil((total - made) / len(able))
    return [{"fault": n, "skipped": skipped[n], "faults": len(records[n])} if n in skipped
            else summarize(n, records[n]) for n in kinds]


def _inject(name: str, size: int, into: list[Any], skipped: dict[str, str],
            progress: Callable[[str], None]) -> None:
    from tests.faults.runner import run
    from tests.faults.targets import Unavailable

    progress(f"faults: {name} x {size} ...")
    with private_tmp() as tmp:
        work = tmp / "work"
        work.mkdir()
        try:
            for record in run(name, size, work):
                into.append(record)
        except Unavailable as exc:
            skipped[name] = str(exc)
        except Exception as exc:  # a broken injector is a FAILED row, not a crashed bench
            skipped[name] = f"FAILED: {type(exc).__name__}: {str(exc)[:80]}"


def summarize(name: str, records: list[Any]) -> dict[str, Any]:
    times = sorted(r.recovery_s * 1000 for r in records if r.recovery_s is not None)
    lost = [r.lost_writes for r in records if r.lost_writes is not None]
    notes = sorted({r.detail.strip() for r in records if r.detail.strip()})
    return {
        "fault": name, "faults": len(records), "recovered": sum(r.recovered for r in records),
        "recovery_p50_ms": percentile(times, 0.50), "recovery_p99_ms": percentile(times, 0.99),
        "hung_calls": sum(len(r.hung_calls) for r in records),
        "untyped_errors": sum(len(r.untyped_errors) for r in records),
        "non_rpc_errors": sum(len(r.non_rpc_errors) for r in records),
        "leaks": sum(len(r.leaks) for r in records),
        "lost_writes": sum(len(x) for x in lost) if lost else None,
        "restarts": sum(r.restarts for r in records),
        "note": notes[0][:60] if notes else "",
        "problems": [r.problems() for r in records if not r.ok][:5],
    }


def fault_table(rows: list[dict[str, Any]]) -> str:
    lines = [HEAD]
    for r in rows:
        if r.get("skipped"):
            lines.append([r["fault"], str(r["faults"]), "-", "-", "-", "-", "-", "-", "-", "-", "-", r["skipped"]])
            continue
        lines.append([r["fault"], str(r["faults"]), str(r["recovered"]), f"{r['recovery_p50_ms']:.0f}",
                      f"{r['recovery_p99_ms']:.0f}", str(r["hung_calls"]), str(r["untyped_errors"]),
                      str(r["non_rpc_errors"]), str(r["leaks"]),
                      "n/a" if r["lost_writes"] is None else str(r["lost_writes"]), str(r["restarts"]), r["note"]])
    total = sum(int(r["faults"]) for r in rows if not r.get("skipped"))
    widths = [max(len(row[i]) for row in lines) for i in range(len(HEAD))]
    out = []
    for n, row in enumerate(lines):
        out.append("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out.append(f"\n{total} faults injected. recovery: fault -> first successful call (a 1 s deadline per call);"
               " hung: calls that outlived their deadline by > 100 ms; lost writes: acknowledged Puts not"
               " readable after recovery (n/a: a deleted pod keeps no files).")
    return "\n".join(out)


# --- run.py's hooks -----------------------------------------------------------------------


def _circuit_fast_fail(ctx: Context) -> Result:
    """An open circuit refuses calls without sending them: how long does the refusal take?"""
    import signal

    from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin

    from plugbay import (
        CircuitBreaker,
        CircuitOpenError,
        Client,
        ClientConfig,
        PluginDiedError,
        ProcessRunner,
    )
    from plugbay.core.resilience.calls import install

    with tempfile.TemporaryDirectory(prefix="plugbay-bench-") as cwd:
        started = time.perf_counter()
        config = ClientConfig(HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, call_timeout=ctx.call_timeout,
                              runner=ProcessRunner([sys.executable, str(REPO / "examples" / "kv" / "plugin.py")],
                                                   cwd=cwd))
        with Client(config) as client:
            breaker = CircuitBreaker(failure_threshold=1, window=600, open_for=600, name="bench")
            install(client, breaker=breaker)
            kv = client.dispense(PLUGIN_NAME)
            kv.put("bench", b"value")
            first = time.perf_counter() - started
            kv.get("bench")  # Get's first use must precede the kill: a new method on a dead plugin crashed grpc
            os.kill(client.runner.pid, signal.SIGKILL)  # type: ignore[attr-defined]
            client.runner.wait(10)
            try:
                kv.get("bench")
            except PluginDiedError:
                pass  # the failure that opens the circuit
            if breaker.state != "open":
                return Result(skipped=f"FAILED: the circuit did not open ({breaker.state})")

            def refused() -> None:
                try:
                    kv.get("bench")
                except CircuitOpenError:
                    return
                raise RuntimeError("an open circuit let a call through")

            latencies, total = timed(ctx.calls, refused)
    return Result(first * 1000, percentile(latencies, 0.50), percentile(latencies, 0.99), ctx.calls,
                  ctx.calls / total if total else 0.0, note="CircuitOpenError fast-fail")


def cases(ctx: Context) -> list[Case]:
    return [Case("Python", "Python (killed)", False, _circuit_fast_fail, area="faults",
                 transport="process, unix, open circuit")]


def extra_report(ctx: Context, progress: Callable[[str], None]) -> tuple[str, list[dict[str, Any]]]:
    """run.py prints this table below its own: ctx.faults injections per fault type."""
    rows = run_faults(ctx.faults, progress=progress)
    return fault_table(rows), rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=None, help="injections per fault type (default 3)")
    parser.add_argument("--total", type=int, default=None, help="at least this many injections in all")
    parser.add_argument("--only", action="append", default=[], choices=FAULT_TYPES, help="one fault type")
    parser.add_argument("--json", action="store_true", help="one JSON object per fault type")
    args = parser.parse_args(argv)
    kinds = args.only or FAULT_TYPES
    size = args.size or (math.ceil(args.total / len(kinds)) if args.total else 3)
    if not 1 <= size <= 10000 or not 0 <= (args.total or 0) <= 100000:
        parser.error("--size must be 1..10000 and --total 0..100000")
    started = time.monotonic()
    rows = run_faults(size, kinds, progress=lambda line: print(line, file=sys.stderr, flush=True),
                      total=args.total or 0)
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(f"\nplugbay fault bench: {size}+ injections per fault type; took {time.monotonic() - started:.0f}s\n")
        print(fault_table(rows))
    bad = [r for r in rows if str(r.get("skipped", "")).startswith("FAILED")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
