"""A plugin command: its check (a non-empty list of strings) and its executable as the OS will run it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from plugbay.errors import ConfigError


def resolve_executable(cmd0: str, env: Mapping[str, str] | None = None) -> str:
    """cmd[0] as the OS will run it: a path, or the first match on PATH."""
    if os.sep in cmd0:
        return os.path.abspath(cmd0)
    path = (env or os.environ).get("PATH", os.defpath)
    found = shutil.which(cmd0, path=path)
    if found is None:
        raise ConfigError(f"plugin command {cmd0!r} is not on PATH ({path}); give its full path")
    return os.path.abspath(found)


def check_cmd(cmd: Any, where: str) -> None:
    """A plugin command is a non-empty list of strings: ConfigError naming ``where`` otherwise."""
    if isinstance(cmd, (str, bytes)) or not isinstance(cmd, Sequence) or not cmd or not all(
            isinstance(part, str) for part in cmd):
        raise ConfigError(f"{where} must be a non-empty list of strings such as [sys.executable, 'plugin.py']"
                          f" (not one command line), got {cmd!r}")
