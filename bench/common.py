"""Shared pieces of the benchmarks: one row's result, percentiles, a Python-host KV driver.

A bench module ``bench/bench_<area>.py`` defines ``cases(ctx: Context) -> list[Case]``;
``bench/run.py`` discovers every such module, runs its cases and prints one table.
A case whose parts are missing returns a Result with ``skipped`` set instead of raising.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO / "src", REPO / "examples" / "kv", REPO):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


@dataclass
class Context:
    calls: int = 500  # unary calls measured per round
    rounds: int = 3  # plugin starts per case that also time --calls calls
    # plugin starts per case for start-to-first-call (their median): the rounds, then start-only ones
    # (start and the first call); rows that support it (core, docker, async, network pool) take them
    starts: int = 9
    # timed rounds of a row whose floor runs between its own (floor round, row round: a pair); its ratio
    # column's p50, p99 and calls/s are the medians of the pairs' own ratios. Three rounds' medians could
    # not tell a 5% target from this shared machine's drift (26 pairs of one row ranged 0.77-1.31x)
    pairs: int = 8
    call_timeout: float = 30.0
    faults: int = 2  # injections per fault type (bench_faults)
    cache: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    start_to_first_call_ms: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0
    calls: int = 0
    calls_per_s: float = 0.0
    skipped: str | None = None
    note: str = ""
    # further figures by name (e.g. "py threads/plugin"), compared with the floor row's own
    metrics: dict[str, float] = field(default_factory=dict)
    # the floor row's start-to-first-call measured between this row's starts (median; 0: not
    # measured): the ratio column's start is taken against it, so load drift between rows cancels
    floor_start_ms: float = 0.0
    # the floor's timed rounds taken between this row's (combined as this row's are; 0: not
    # measured): the ratio column's p50, p99, calls/s and named figures are taken against them
    floor_p50_us: float = 0.0
    floor_p99_us: float = 0.0
    floor_calls_per_s: float = 0.0
    floor_metrics: dict[str, float] = field(default_factory=dict)
    # {"p50", "p99", "calls/s"}: the median of the per-pair ratios (row round / the floor round just
    # before it), and how many pairs; the ratio column shows these where present
    pair_ratios: dict[str, float] = field(default_factory=dict)
    pairs: int = 0
    # the median of the pairs' start differences (row start - the floor start just before it), where
    # every start was paired (its ratio: pair_ratios["start"]); None: not paired
    pair_start_ms: float | None = None


@dataclass
class Case:
    host: str  # "Python", "Go"
    plugin: str  # "Python", "Go", "Python (docker)", ...
    automtls: bool
    run: Callable[[Context], Result]
    area: str = "core"
    transport: str = "process, unix"
    key: str = ""  # names this row for others' ``floor``
    floor: str = ""  # the key of the bare-grpcio row this one is compared with (the ratio column)

    @property
    def label(self) -> str:
        return f"{self.host} host -> {self.plugin} plugin"


def percentile(sorted_values: Sequence[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(p * (len(sorted_values) - 1) + 0.5))]


def combine(rounds: Sequence[Result], starts: Sequence[float] = (),
            floor_starts: Sequence[float] = (), floor_rounds: Sequence[Result] = ()) -> Result:
    """Median start-to-first-call, median p50 and calls/s, the highest round's p99.

    ``starts``: more start-to-first-call samples (start-only rounds) for the median;
    ``floor_starts``: the floor's, measured between them (Result.floor_start_ms);
    ``floor_rounds``: the floor's timed rounds, measured between this row's (Result.floor_*).
    """
    firsts = [r.start_to_first_call_ms for r in rounds] + list(starts)
    floor = combine(floor_rounds) if floor_rounds else Result()
    return Result(
        floor_start_ms=statistics.median(floor_starts) if floor_starts else 0.0,
        floor_p50_us=floor.p50_us, floor_p99_us=floor.p99_us, floor_calls_per_s=floor.calls_per_s,
        floor_metrics=floor.metrics,
        start_to_first_call_ms=statistics.median(firsts),
        p50_us=statistics.median(r.p50_us for r in rounds),
        p99_us=max(r.p99_us for r in rounds),
        calls=sum(r.calls for r in rounds),
        calls_per_s=statistics.median(r.calls_per_s for r in rounds),
        note="; ".join(sorted({r.note for r in rounds if r.note})),
        metrics={k: statistics.median(r.metrics[k] for r in rounds if k in r.metrics)
                 for k in {k for r in rounds for k in r.metrics}},
    )


def go_program(ctx: Context, name: str) -> str | None:
    """Path of a built Go test program, or None (the reason is kept in ctx.cache["go:reason"])."""
    key = f"go:{name}"
    if key not in ctx.cache:
        try:
            from tests import gobuild

            reason = gobuild.go_missing_reason()
            ctx.cache[key] = None if reason else str(gobuild.build_go(name))
            ctx.cache["go:reason"] = reason
        except Exception as exc:  # a failed build is a skipped row, not a failed run
            ctx.cache[key] = None
            ctx.cache["go:reason"] = f"build failed: {str(exc).splitlines()[0]}"
    value = ctx.cache[key]
    return value if isinstance(value, str) else None


def load_file(path: str, name: str) -> ModuleType:
    """The Python file ``path`` loaded as module ``name`` (not put in sys.modules): an A/B script's version."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(calls: int, func: Callable[[], Any]) -> tuple[list[float], float]:
    """Run ``func`` ``calls`` times: sorted per-call latencies (us) and the total seconds."""
    latencies: list[float] = []
    t0 = time.perf_counter()
    for _ in range(calls):
        s = time.perf_counter()
        func()
        latencies.append((time.perf_counter() - s) * 1e6)
    total = time.perf_counter() - t0
    latencies.sort()
    return latencies, total


def interleaved(ctx: Context, start: Callable[[int], Result],
                floor: Callable[[int], Result] | None = None) -> Result:
    """ctx.starts starts of a row (``start(calls)``: the first ctx.rounds time ctx.calls calls, the
    rest 0), each after one round of its floor (``floor(calls)``, the same calls) when given; combined.

    A shared machine's load drifts between rows: the floor measured between this row's own
    rounds sees the same load, so the ratio column compares like with like.
    """
    rounds: list[Result] = []
    starts: list[float] = []
    floor_starts: list[float] = []
    floor_rounds: list[Result] = []
    timed_rounds = max(ctx.rounds, ctx.pairs) if floor is not None else ctx.rounds
    for n in range(max(timed_rounds, ctx.starts)):
        with_calls = n < timed_rounds
        if floor is not None:
            got = floor(ctx.calls if with_calls else 0)
            floor_starts.append(got.start_to_first_call_ms)
            if with_calls:
                floor_rounds.append(got)
        if with_calls:
            rounds.append(start(ctx.calls))
        else:
            starts.append(start(0).start_to_first_call_ms)
    result = combine(rounds, starts, floor_starts, floor_rounds)
    if floor_rounds:
        result.pair_ratios = pair_ratios(rounds, floor_rounds)
        result.pairs = len(floor_rounds)
    if floor_starts:  # every start had its floor's just before it: the figures are the pairs', as the p50's
        paired_starts(result, [r.start_to_first_call_ms for r in rounds] + starts, floor_starts)
    return result


def paired_starts(result: Result, starts: Sequence[float], floor_starts: Sequence[float]) -> None:
    """Note in ``result`` the medians of each start's ratio to (and difference from) its paired floor start.

    Steadier than the two medians' ratio: a load that drifts over the row moves both starts
    of a pair alike, and the pair's own figure keeps what they share out.
    """
    pairs = [(mine, floor) for mine, floor in zip(starts, floor_starts) if floor > 0]
    if pairs:
        result.pair_ratios["start"] = statistics.median(mine / floor for mine, floor in pairs)
        result.pair_start_ms = statistics.median(mine - floor for mine, floor in pairs)


def pair_ratios(rounds: Sequence[Result], floor_rounds: Sequence[Result]) -> dict[str, float]:
    """The medians of each round's p50, p99 and calls/s over its paired floor round's."""
    pairs = list(zip(rounds, floor_rounds))
    out: dict[str, float] = {}
    for name, figure in (("p50", "p50_us"), ("p99", "p99_us"), ("calls/s", "calls_per_s")):
        ratios = [getattr(r, figure) / getattr(f, figure) for r, f in pairs if getattr(f, figure)]
        if ratios:
            out[name] = statistics.median(ratios)
    return out


def measure_kv(kv: Any, calls: int, started: float, note: str) -> Result:
    """Put once (the first call, timed from ``started``), then time ``calls`` Gets."""
    kv.put("bench", b"value")
    first = time.perf_counter() - started
    latencies, total = timed(calls, lambda: kv.get("bench"))
    return Result(first * 1000, percentile(latencies, 0.50), percentile(latencies, 0.99), calls,
                  calls / total if total else 0.0, note=note)


def python_host_round(config: Any, calls: int) -> Result:
    """Start a plugin with a plugbay Client, then measure_kv() through it."""
    from kv_plugin_def import PLUGIN_NAME

    from plugbay import Client

    started = time.perf_counter()
    with Client(config) as client:
        result = measure_kv(client.dispense(PLUGIN_NAME), calls, started, note="")
        result.note = client.connection_mode
    return result
