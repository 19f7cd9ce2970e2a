"""No process is started with a ``preexec_fn``: that Python runs in a plain fork() of a process where
grpcio may be live, and grpcio's fork handlers then crash some such children before their exec (see
tests/rlimited.py). plugbay's runners never use one (runners/hostbound.py says why); neither do tests."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _calls_with_preexec_fn(path: Path, root: Path = REPO) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    return [f"{path.relative_to(root)}:{node.lineno}" for node in ast.walk(tree)
            if isinstance(node, ast.Call) and any(k.arg == "preexec_fn" for k in node.keywords)]


def test_no_call_passes_a_preexec_fn() -> None:
    files = [p for top in ("src", "tests", "examples", "bench") for p in (REPO / top).rglob("*.py")]
    assert len(files) > 100
    found = [hit for path in files for hit in _calls_with_preexec_fn(path)]
    assert found == [], f"use tests/rlimited.py (or a C-level spawn option) instead: {found}"


def test_the_check_sees_a_preexec_fn(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import subprocess\n# preexec_fn in a comment is fine\n"
                      "subprocess.run(['true'], preexec_fn=lambda: None)\n")
    assert _calls_with_preexec_fn(sample, tmp_path) == ["sample.py:3"]
