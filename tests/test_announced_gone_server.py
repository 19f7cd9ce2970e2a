"""A plugin whose server is gone right after its handshake line, and which then exits, is told as exited (the
cause), not refused for its address with advice to trust it: the proof met a listener no process held, as a
dying server leaves for a moment, and judged the address before the plugin's exit could show."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.resilience_util import HANDSHAKE, PLUGINS, PY, REPO

from plugbay import Client, ClientConfig, PluginExitedError, UnprovenAddressError  # noqa: E402

IN_FLIGHT = str(REPO / "tests" / "plugins" / "listener_in_flight.py")


def _start(tmp_path: Path, linger: str) -> BaseException:
    client = Client(ClientConfig(handshake=HANDSHAKE, plugins=PLUGINS, cmd=[PY, IN_FLIGHT, linger],
                                 start_timeout=30.0))
    try:
        with pytest.raises(Exception) as raised:
            client.start()
        return raised.value
    finally:
        client.kill()


def test_a_plugin_exiting_after_its_server_went_is_told_as_exited(tmp_path: Path) -> None:
    error = _start(tmp_path, "0.3")
    assert isinstance(error, PluginExitedError), repr(error)
    assert "exited with code 3" in str(error), str(error)
    assert "trust_announced_address" not in str(error), str(error)


def test_one_that_stays_is_still_refused_for_its_address(tmp_path: Path) -> None:
    error = _start(tmp_path, "20")  # alive past the moment its exit is waited for: the address is what is wrong
    assert isinstance(error, UnprovenAddressError), repr(error)
