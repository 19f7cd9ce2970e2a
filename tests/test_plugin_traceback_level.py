"""A Python plugin's traceback on its stderr is logged at ERROR, as a Go plugin's panic is, from its first line
through its exception's; the plugin's other plain lines stay INFO.

A Python plugin that crashed before serve() (an import that fails, a bad config) had its traceback logged at INFO,
below a host's default WARNING: the host's log showed nothing of a real failure, while a Go crash was an ERROR.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from plugbay import Client, ClientConfig, HandshakeConfig, PluginExitedError

_CRASHING = '''
import sys
print("loading /etc/kv.conf", file=sys.stderr, flush=True)
try:
    {}["db"]
except KeyError as exc:
    raise RuntimeError("the config has no 'db' key") from exc
'''


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_python_plugins_traceback_is_an_error(tmp_path: Path) -> None:
    script = tmp_path / "crashing.py"
    script.write_text(_CRASHING)
    logger = logging.getLogger("test-plugin-traceback-level")
    logger.setLevel(logging.DEBUG)
    seen = _Records()
    logger.addHandler(seen)
    try:
        client = Client(ClientConfig(handshake=HandshakeConfig(1, "BASIC_PLUGIN", "hello"), plugins={},
                                     cmd=[sys.executable, str(script)], logger=logger, name="crashing"))
        with pytest.raises(PluginExitedError) as exited:
            client.start()
        client.kill()
    finally:
        logger.removeHandler(seen)
    assert "RuntimeError: the config has no 'db' key" in str(exited.value)
    levels = {record.getMessage(): record.levelno for record in seen.records}
    assert levels["loading /etc/kv.conf"] == logging.INFO, levels
    assert levels["Traceback (most recent call last):"] == logging.ERROR, levels
    assert levels["KeyError: 'db'"] == logging.ERROR, levels
    assert levels["The above exception was the direct cause of the following exception:"] == logging.ERROR, levels
    assert levels["RuntimeError: the config has no 'db' key"] == logging.ERROR, levels
    frames = [message for message in levels if message.startswith('  File "')]
    assert frames and all(levels[frame] == logging.ERROR for frame in frames), levels
