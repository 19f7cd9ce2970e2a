"""PluginContainer with testcontainers' Ryuk reaper left on, its image not on the (real) engine.

testcontainers starts Ryuk before the first container of a run and pulls its image when the engine
lacks it (a registry that can be reached serves it: plugbay leaves that pull alone); offline that was
docker's bare APIError (a 500 naming registry-1.docker.io) out of start(), now a plugbay error.
The suite runs with TESTCONTAINERS_RYUK_DISABLED=true (tests/leakcheck.py); these tests turn it back off.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from plugbay.errors import ImageNotFoundError

pytest.importorskip("testcontainers")
from plugbay.testing import PluginContainer  # noqa: E402

pytestmark = [pytest.mark.docker]

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))
from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402


@pytest.fixture
def ryuk_on(monkeypatch: pytest.MonkeyPatch, plugbay_docker: Any) -> str:
    """Ryuk turned on for the test, as a user's default; its image name (skips if the engine has it)."""
    from docker.errors import ImageNotFound
    from testcontainers.core.config import testcontainers_config as config
    from testcontainers.core.container import Reaper

    try:
        plugbay_docker.images.get(config.ryuk_image)
        pytest.skip(f"the engine has {config.ryuk_image}: testcontainers would run it, not pull it")
    except ImageNotFound:
        pass
    monkeypatch.delenv("TESTCONTAINERS_RYUK_DISABLED", raising=False)
    monkeypatch.setattr(config, "ryuk_disabled", False)
    assert Reaper._instance is None
    return config.ryuk_image


def test_a_missing_ryuk_image_is_a_plugbay_error_that_says_how_out(ryuk_on: str, plugbay_image: Any,
                                                                   plugbay_docker: Any) -> None:
    from testcontainers.core.config import testcontainers_config as config
    from testcontainers.core.container import SESSION_ID

    name = f"plugbay-tc-ryuk-{uuid.uuid4().hex[:8]}"
    plugin = PluginContainer(plugbay_image("kv"), HANDSHAKE, {PLUGIN_NAME: KVPlugin(None)},  # type: ignore[arg-type]
                             name=name)
    with pytest.raises(ImageNotFoundError) as info:
        with plugin:
            pytest.fail("the plugin started though Ryuk cannot")
    said = str(info.value)
    assert f"Ryuk reaper (image {ryuk_on!r})" in said and "could not pull that image" in said
    assert "TESTCONTAINERS_RYUK_DISABLED=true" in said and "docker load" in said
    # nothing was pulled, made or left, and the user's settings are as they were
    with pytest.raises(Exception, match="No such image"):
        plugbay_docker.images.get(ryuk_on)
    assert plugbay_docker.containers.list(all=True, filters={"name": name}) == []
    assert plugbay_docker.containers.list(all=True, filters={"name": f"testcontainers-ryuk-{SESSION_ID}"}) == []
    assert "TESTCONTAINERS_RYUK_DISABLED" not in os.environ and config.ryuk_disabled is False
    # the same container starts once the user turns the reaper off
    config.ryuk_disabled = True
    with plugin:
        kv = plugin.dispense(PLUGIN_NAME)
        kv.put("k", b"reaperless")
        assert kv.get("k") == b"reaperless"
