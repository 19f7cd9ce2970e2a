"""The trap_kv test plugin launched by the process runner: its command, a Client config, its cwd."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import ClientConfig  # noqa: E402

PY = sys.executable
TRAP = [PY, str(REPO / "tests" / "plugins" / "trap_kv.py")]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # trap_kv writes kv_<key> files in its cwd


def config(cmd: list[str], **kw: object) -> ClientConfig:
    return ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, cmd=cmd, **kw)  # type: ignore[arg-type]
