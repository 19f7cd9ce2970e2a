"""What the interleaved A/B scripts of two checkouts (aio_ab.py, broker_ab.py) share: each side's source
tree, one round run in a child process on a tree, the pairs of rounds in alternating order, and the summary
of the pairs' NEW/OLD ratios. Imports no plugbay: a round's process must import its tree's first."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

Figures = dict[str, float]


def source_tree(spec: str, scratch: str, side: str) -> str:
    """``spec`` itself when it is a source tree (src/plugbay and examples), else the git revision ``spec``
    of this checkout exported under ``scratch``."""
    if (Path(spec) / "src" / "plugbay").is_dir() and (Path(spec) / "examples").is_dir():
        return str(Path(spec).resolve())
    out = os.path.join(scratch, side)  # a folder per side: an A/A run exports the revision twice
    os.makedirs(out)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", spec, "src", "examples"],
                             capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", out], input=archive.stdout, check=True)
    return out


def run_round(script: str, tree: str, options: Sequence[str]) -> Figures:
    """The figures ``script --round tree OPTIONS`` prints (its last line, JSON), run with ``tree``'s src first."""
    env = {**os.environ, "PYTHONPATH": os.path.join(tree, "src")}
    cmd = [sys.executable, script, "--round", tree, *options]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"a round of {tree} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    figures: Figures = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def interleaved(old: str, new: str, pairs: int, scratch_prefix: str, figures: Sequence[str],
                run: Callable[[str], Figures]) -> dict[str, list[Figures]]:
    """``pairs`` pairs of rounds (``run(tree)``) of OLD's and NEW's trees, the order flipping every pair so the
    drift of a shared machine's load hits both alike; each pair's figures go to stderr as it ends."""
    scratch = tempfile.mkdtemp(prefix=scratch_prefix)
    try:
        trees = {side: source_tree(spec, scratch, side) for side, spec in (("old", old), ("new", new))}
        got: dict[str, list[Figures]] = {"old": [], "new": []}
        for n in range(pairs):
            for side in ("old", "new") if n % 2 == 0 else ("new", "old"):
                got[side].append(run(trees[side]))
            print(f"pair {n + 1}: " + "  ".join(f"{f} {got['old'][-1][f]:.0f}/{got['new'][-1][f]:.0f}"
                                                for f in figures), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return got


def summarise(got: dict[str, list[Figures]], figures: Sequence[str], width: int, word: str,
              higher_is_better: Collection[str] = ()) -> dict[str, dict[str, Any]]:
    """Per figure: each side's median, the median of the pairs' NEW/OLD ratios and their range, and in how
    many pairs NEW was ``word`` (NEW/OLD above 1 for a figure in ``higher_is_better``, else below 1), kept
    as ``new_WORD``; printed one line a figure, its name in ``width`` columns."""
    summary = {}
    for f in figures:
        ratios = sorted(new[f] / old[f] for old, new in zip(got["old"], got["new"]))
        count = sum((r > 1) if f in higher_is_better else (r < 1) for r in ratios)
        summary[f] = {"old": statistics.median(r[f] for r in got["old"]),
                      "new": statistics.median(r[f] for r in got["new"]),
                      "ratio": round(statistics.median(ratios), 3),
                      "range": [round(ratios[0], 3), round(ratios[-1], 3)],
                      f"new_{word}": count}
        print(f"{f:{width}} old {summary[f]['old']:8.0f}  new {summary[f]['new']:8.0f}  new/old median"
              f" {summary[f]['ratio']:.3f} [{ratios[0]:.3f}..{ratios[-1]:.3f}], new {word} in {count}/{len(ratios)}")
    return summary
