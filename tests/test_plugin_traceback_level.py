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
import sys, traceback
print("loading /etc/kv.conf", file=sys.stderr, flush=True)
try:
    open("/nonexistent/kv.conf")
except OSError:
    traceback.print_exc()  # handled: its traceback is an ERROR, the lines after it are the plugin's own again
print("using the defaults", file=sys.stderr, flush=True)
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
    levels, exited = _levels_of(tmp_path, _CRASHING)
    assert "RuntimeError: the config has no 'db' key" in str(exited)
    assert levels["loading /etc/kv.conf"] == logging.INFO, levels
    assert levels["using the defaults"] == logging.INFO, levels  # the traceback before it ended at its exception
    assert levels["Traceback (most recent call last):"] == logging.ERROR, levels
    assert levels["KeyError: 'db'"] == logging.ERROR, levels
    assert levels["The above exception was the direct cause of the following exception:"] == logging.ERROR, levels
    assert levels["RuntimeError: the config has no 'db' key"] == logging.ERROR, levels
    frames = [message for message in levels if message.startswith('  File "')]
    assert frames and all(levels[frame] == logging.ERROR for frame in frames), levels


def _levels_of(tmp_path: Path, source: str) -> tuple[dict[str, int], BaseException]:
    """The level each stderr line of a plugin running ``source`` was logged at, and its start's error."""
    script = tmp_path / "crashing.py"
    script.write_text(source)
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
    return {record.getMessage(): record.levelno for record in seen.records}, exited.value


def test_a_syntax_error_and_an_exception_group_are_errors_too(tmp_path: Path) -> None:
    # a SyntaxError in the plugin's script prints no "Traceback" line, and an ExceptionGroup's first line is
    # indented: both stayed INFO (found in review)
    levels, _ = _levels_of(tmp_path, "import sys\ndef (:\n")  # never runs: Python prints where, then the error
    assert any(m.startswith("SyntaxError") for m in levels), levels
    assert levels and all(v == logging.ERROR for v in levels.values()), levels
    group = ("import sys\nprint('starting', file=sys.stderr, flush=True)\n"
             "raise ExceptionGroup('tasks failed', [ValueError('no db'), KeyError('k')])\n")
    levels, _ = _levels_of(tmp_path, group)
    assert levels["starting"] == logging.INFO, levels
    started = [m for m in levels if "Exception Group Traceback" in m]
    assert started and levels[started[0]] == logging.ERROR, levels
    assert all(v == logging.ERROR for m, v in levels.items() if m != "starting"), levels
