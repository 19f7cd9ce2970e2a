"""A plugin command: its checks (a non-empty list of strings, an environment the OS can take) and its
executable as the OS will run it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from plugbay.core.protocol.handshake import env_problem
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
    if any("\0" in part for part in cmd):
        raise ConfigError(f"{where} holds a NUL byte, which no command line can carry: {cmd!r}; remove it")


def check_env(env: Any, where: str) -> None:
    """A plugin's extra environment is a dict of str -> str the OS can take: ConfigError naming ``where``."""
    if not isinstance(env, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ConfigError(f"{where} must be a dict of str -> str (the plugin's extra environment)")
    for key, value in env.items():
        problem = env_problem(key, value)
        if problem is not None:
            raise ConfigError(f"{where} cannot be the plugin's environment: its {problem}; rename or drop that"
                              " entry")


def check_text_env(env: Mapping[str, str], where: str) -> None:
    """An environment sent as UTF-8 JSON (a container's, a pod's) cannot carry a raw byte that is not
    UTF-8 ('\\udcff', as os.environ and argv show one): the engine or API server would get an error or
    U+FFFD instead. ConfigError naming ``where`` and the variable; a process's environment takes it."""
    for key, value in env.items():
        try:
            key.encode("utf-8"), value.encode("utf-8")
        except UnicodeError:
            raise ConfigError(f"{where} cannot send environment variable {key!r}={value!r}: it holds a byte that is"
                              " not UTF-8 (shown as '\\udc..'), and the environment goes out as UTF-8 JSON; use"
                              " text (for a magic cookie: a HandshakeConfig of plain text)") from None
