"""The benchmark command runs every area end to end (tiny counts; numbers are not judged here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(960)  # the run's own bound is 900 s: the Docker and Kubernetes rows alone take minutes
def test_every_bench_row_runs_or_says_why_not(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--calls", "5", "--rounds", "1",
                             "--starts", "1", "--pairs", "1", "--faults", "1", "--json"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    areas = {row["area"] for row in rows}
    assert {"core", "async", "broker", "docker", "kubernetes", "resilience", "scale", "faults"} <= areas, areas
    fault_rows = [row for row in rows if row.get("table") == "extra"]
    assert {row["fault"] for row in fault_rows} >= {"kill9-python", "sigstop", "hang", "host-kill"}, fault_rows
    for row in fault_rows:
        assert not (row.get("skipped") or "").startswith("FAILED"), row
        assert row.get("skipped") or (row["faults"] == 1 and row["recovered"] == 1), row
    for row in rows:
        if row.get("table") == "extra":
            continue
        assert not (row.get("skipped") or "").startswith("FAILED"), row
        if not row.get("skipped"):
            # throughput-only rows (yamux MB/s) carry their figure in metrics
            assert row["start_to_first_call_ms"] > 0 or row["metrics"], row
            # start-only rows (e.g. `docker run --rm IMAGE true`) make no calls
            assert row["calls"] == 0 or row["p50_us"] > 0, row
