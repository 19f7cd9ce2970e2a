from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.leakcheck", "tests.hangwatch", "tests.closeduse"]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test in tmp_path: example plugins write kv_<key> files into their working folder."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
