"""What PluginContainer asks the engine: never a pull.

A stand-in engine (tests/standin_engine.py) records the requests; it accepts the container
create and refuses the start, so no real container is made.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE  # noqa: E402

from plugbay.errors import ImageNotFoundError  # noqa: E402
from tests.standin_engine import StandinEngine  # noqa: E402

pytest.importorskip("testcontainers")
from plugbay.testing import PluginContainer  # noqa: E402


@pytest.fixture(autouse=True)
def _no_ryuk(monkeypatch: pytest.MonkeyPatch) -> None:
    from testcontainers.core.config import testcontainers_config

    monkeypatch.setattr(testcontainers_config, "ryuk_disabled", True)  # Ryuk's image would be pulled


def test_a_missing_image_is_never_pulled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # testcontainers' create() pulled an image the engine lacked, and its failure was a docker SDK error
    engine = StandinEngine(str(tmp_path / "engine.sock"))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{engine.path}")
    try:
        container = PluginContainer("plugbay-missing:latest", HANDSHAKE)
        with pytest.raises(ImageNotFoundError, match="'plugbay-missing:latest' is not on the Docker engine") as info:
            container.start()
        assert "python -m plugbay.images" in str(info.value) and "plugbay never pulls" in str(info.value)
        assert engine.pulls() == []
        assert engine.creates == []
    finally:
        engine.close()

