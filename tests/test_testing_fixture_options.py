"""The pytest fixtures' options are checked as ClientConfig's and DockerRunner's are: a misspelled one is a
ConfigError naming the valid ones (it was Python's bare TypeError, or a ValueError for a runner= given as a
str), and nothing is started."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay.errors import ConfigError  # noqa: E402

KV = [sys.executable, str(REPO / "examples" / "kv" / "plugin.py")]
PLUGINS = {PLUGIN_NAME: KVPlugin()}


def test_a_misspelled_client_option_of_plugin_process_is_a_config_error(plugin_process: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError, match=r"'start_timout' is no ClientConfig field; .*: handshake, .*start_timeout"):
        plugin_process(KV, HANDSHAKE, PLUGINS, start_timout=5)


@pytest.mark.parametrize(("runner", "says"), [
    ({"transprt": "tcp"}, r"runner= holds 'transprt', which DockerRunner does not take; its options are transport,"),
    ("tcp", r"runner= takes a dict of DockerRunner options, such as \{'transport': 'tcp'\}, got str"),
])
def test_a_wrong_runner_option_of_plugin_container_is_a_config_error(plugin_container: Callable[..., Any],
                                                                     runner: Any, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        plugin_container("plugbay-kv:latest", HANDSHAKE, PLUGINS, runner=runner)


def test_a_misspelled_client_option_of_plugin_container_is_a_config_error(plugin_container: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError, match=r"'kill_grase' is no ClientConfig field"):
        plugin_container("plugbay-kv:latest", HANDSHAKE, PLUGINS, kill_grase=1)
