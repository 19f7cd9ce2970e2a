"""A plugin whose announced address answers no HTTP/2 is refused at once, not dialled until start_timeout.

A handshake line is the plugin's word: the path or port it names may be another service's (an engine's API
socket, a web server). gRPC then reads an HTTP/1 answer where HTTP/2's SETTINGS frame belongs, which no wait
changes; the start used to retry it for the whole start_timeout and then advise raising it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import Client, ClientConfig  # noqa: E402
from plugbay.errors import HandshakeTimeoutError, ProtocolMismatchError  # noqa: E402

LISTENER = REPO / "tests" / "plugins" / "http1_listener.py"


@pytest.mark.parametrize("network", ["unix", "tcp"])
def test_an_announced_address_that_answers_http1_is_a_protocol_mismatch(network: str, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, start_timeout=30,
                                 cmd=[sys.executable, str(LISTENER), network, str(pid_file)]))
    try:
        with pytest.raises(ProtocolMismatchError) as caught:
            client.start()
    finally:
        client.kill()
    assert not isinstance(caught.value, HandshakeTimeoutError)
    message = str(caught.value)
    assert "no HTTP/2" in message and "not the plugin's gRPC server" in message
    assert "raise start_timeout" not in message.lower()
    pid = int(pid_file.read_text())
    assert not os.path.exists(f"/proc/{pid}"), "the refused plugin was left running"
