"""pytest fixtures for tests whose pods run as processes on the stand-in (no Docker needed).

Import both into a test module: ``server`` (one stand-in per module) and ``kubeconfig`` (a
kubeconfig file for it; its refusals are reset after each test).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .server import StandIn


@pytest.fixture(scope="module", name="server")
def process_standin() -> Iterator[StandIn]:
    standin = StandIn(runtime="process").start()
    try:
        yield standin
    finally:
        standin.stop()


@pytest.fixture(name="kubeconfig")
def process_kubeconfig(server: StandIn, tmp_path: Path) -> Iterator[str]:
    yield server.write_kubeconfig(str(tmp_path / "kubeconfig.yaml"))
    server.allow_all()
