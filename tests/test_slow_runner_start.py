"""A runner.start() that uses up start_timeout (a slow engine) is named as such, not blamed on the plugin.

The engine is reached through tests/engine_relay.py, which holds the container create
for longer than the Client's start_timeout: the plugin never had time to print its
handshake line, and the error must say where the time went.
"""

from __future__ import annotations

import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from plugbay.core.host.client import Client, ClientConfig
from plugbay.errors import HandshakeTimeoutError
from plugbay.runners.docker import DockerRunner
from tests.engine_relay import EngineRelay, relay  # noqa: F401  (relay is a fixture)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("plugbay_docker")]


def test_a_slow_container_create_is_named_in_the_timeout(relay: EngineRelay, plugbay_image: Any,  # noqa: F811
                                                        plugbay_docker: Any) -> None:
    tag = uuid.uuid4().hex
    runner = DockerRunner(plugbay_image("kv"), writable_dirs=("/tmp", "/data"), labels={"test.plugbay-slow": tag})
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner,
                                 start_timeout=3))
    relay.hold("POST", "/containers/create")
    releaser = threading.Timer(4.5, relay.release)
    releaser.start()
    try:
        with pytest.raises(HandshakeTimeoutError, match=r"took [0-9.]+s in DockerRunner\.start\(\).*start_timeout"
                                                        r" \(3\.0s\)"):
            client.start()
    finally:
        releaser.cancel()
        relay.release()
        client.kill()
        for found in plugbay_docker.containers.list(all=True, filters={"label": f"test.plugbay-slow={tag}"}):
            found.remove(force=True, v=True)
