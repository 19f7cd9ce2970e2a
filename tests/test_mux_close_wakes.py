"""A plugin with the multiplexed broker exits at Shutdown without waiting out its accept loops' polls.

close() joined each brokered dial's bridge in turn, then the front's acceptor, and each loop saw
the stop only at its next poll (0.2 s): a plugin took 0.4-1.2 s to exit against 0.04 s without
multiplexing, near go-plugin's 2 s before it kills. The plugin here polls and joins for an hour
(tests/plugins/long_poll_counter.py), so it exits only if close() wakes every loop.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "counter"))
from counter_plugin_def import HANDSHAKE, PLUGIN_NAME, CounterPlugin  # noqa: E402

from plugbay import Client, ClientConfig  # noqa: E402

PLUGIN = ROOT / "tests" / "plugins" / "long_poll_counter.py"
HANG_GUARD = 60.0  # the host's grace after Shutdown: only a plugin that never exits waits it out


class Adder:
    def __init__(self) -> None:
        self.calls = 0

    def sum(self, a: int, b: int) -> int:
        self.calls += 1
        return a + b


def test_shutdown_wakes_every_accept_loop(in_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="plugbay")
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: CounterPlugin()},
                                 cmd=[sys.executable, str(PLUGIN)], multiplex_broker=True,
                                 kill_grace=HANG_GUARD))
    try:
        client.start()
        adder = Adder()
        client.dispense(PLUGIN_NAME).put("k", 2, adder)  # the plugin dials this host's adder: a bridge
        assert adder.calls == 1 and client.dispense(PLUGIN_NAME).get("k") == 2
    finally:
        client.kill()
    assert client.runner.wait(0) == 0, "the plugin did not exit by itself after Shutdown"
    assert not [r for r in caplog.records if "did not exit" in r.getMessage()]
