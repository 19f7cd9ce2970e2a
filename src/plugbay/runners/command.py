"""A plugin command: its checks (a non-empty list of strings or paths, an environment the OS can take) and its
executable as the OS will run it."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from plugbay.core.protocol.handshake import env_problem
from plugbay.errors import ConfigError


def check_cwd(cwd: Any) -> str | None:
    """ProcessRunner's cwd as a str path (bytes decoded as the OS names files); ConfigError for what is none."""
    if cwd is None:
        return None
    try:
        folder = os.fsdecode(cwd)  # only str, bytes and os.PathLike pass
    except TypeError:
        raise ConfigError(f"ProcessRunner cwd must be a folder path (a str or an os.PathLike such as"
                          f" pathlib.Path), got {type(cwd).__name__} {cwd!r}") from None
    if "\0" in folder:
        raise ConfigError(f"ProcessRunner cwd holds a NUL byte, which no folder path can: {folder!r}")
    return folder


def resolve_executable(cmd0: str, env: Mapping[str, str] | None = None, cwd: str | None = None) -> str:
    """cmd[0] as the exec in the started plugin finds it: the file SecureConfig must check.

    The child has moved to ``cwd`` (None: this process's folder) and has the environment ``env``
    (None: this process's) when it execs, so a name holding '/' is taken from ``cwd``, and a bare
    name is the first executable file on env's PATH (os.defpath when it has none), a relative PATH
    entry (an empty one: the folder itself) taken from ``cwd`` -- what subprocess's exec does.
    """
    if os.sep in cmd0:
        return _absolute(os.path.join(os.getcwd(), cwd or "", cmd0))
    path = (os.environ if env is None else env).get("PATH", os.defpath)
    for candidate in path_candidates(cmd0, path, cwd):
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK) and _exec_allowed(candidate):
            return _absolute(candidate)
    raise ConfigError(f"plugin command {cmd0!r} is not on PATH ({path}); give its full path")


def path_candidates(cmd0: str, path: str, cwd: str | None = None) -> Iterator[str]:
    """Where the exec looks for a bare ``cmd0``, in order: each entry of ``path`` (a relative one, an empty
    one too, taken from ``cwd``, None: this process's folder)."""
    folder = os.path.join(os.getcwd(), cwd or "")
    for entry in path.split(os.pathsep):
        yield os.path.join(folder, entry, cmd0)


def _absolute(path: str) -> str:
    # '..' is left alone: after a symlink it leads elsewhere than the name's lexical parent
    return path if os.pardir in path.split(os.sep) else os.path.normpath(path)


def _exec_allowed(path: str) -> bool:
    """False on a noexec mount, whose files the exec skips (EACCES) for the next PATH entry."""
    try:
        return not os.statvfs(path).f_flag & os.ST_NOEXEC
    except OSError:
        return False


def check_cmd(cmd: Any, where: str) -> None:
    """A plugin command is a non-empty list of str or os.PathLike items: ConfigError naming ``where`` otherwise."""
    command_strings(cmd, where)


def command_kept(cmd: Any, where: str) -> Sequence[str]:
    """``cmd`` itself when every item is a str (the caller's own list stays theirs), else its text
    (command_strings); ConfigError naming ``where`` as command_strings gives."""
    texts = command_strings(cmd, where)
    return cmd if all(isinstance(part, str) for part in cmd) else texts


def command_strings(cmd: Any, where: str) -> list[str]:
    """``cmd`` as the list of str the exec gets: an os.PathLike item (pathlib.Path) os.fspath'ed, as cwd= takes
    one; ConfigError naming ``where`` for anything else. A bytes item (or a path naming itself in bytes) is
    refused rather than decoded: cmd is shown and compared as text, and os.fsdecode() is the caller's choice."""
    parts = None if isinstance(cmd, (str, bytes)) or not isinstance(cmd, Sequence) or not cmd else [
        _text(part) for part in cmd]
    if parts is None or None in parts:
        wrong = [] if parts is None else [part for part, text in zip(cmd, parts) if text is None]
        hint = "; decode a bytes path with os.fsdecode()" if any(
            isinstance(part, (bytes, os.PathLike)) for part in wrong) else ""
        raise ConfigError(f"{where} must be a non-empty list of strings (or os.PathLike paths such as pathlib.Path)"
                          f" such as [sys.executable, 'plugin.py'] (not one command line), got {cmd!r}{hint}")
    texts = [part for part in parts if part is not None]
    if any("\0" in part for part in texts):
        raise ConfigError(f"{where} holds a NUL byte, which no command line can carry: {cmd!r}; remove it")
    return texts


def _text(part: Any) -> str | None:
    """A command item as str, or None when it is no str path (bytes, a number, a PathLike giving bytes)."""
    if isinstance(part, os.PathLike):
        try:
            part = os.fspath(part)
        except TypeError:  # a __fspath__ that returns neither str nor bytes
            return None
    return part if isinstance(part, str) else None


def check_env(env: Any, where: str) -> None:
    """A plugin's extra environment is a dict of str -> str the OS can take: ConfigError naming ``where``."""
    if not isinstance(env, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ConfigError(f"{where} must be a dict of str -> str (the plugin's extra environment)")
    for key, value in env.items():
        problem = env_problem(key, value)
        if problem is not None:
            raise ConfigError(f"{where} cannot be the plugin's environment: {problem}; rename or drop that"
                              " entry")


def check_launch_env(env: Any, where: str) -> None:
    """A LaunchSpec's environment, at start(): ConfigError for what the exec would take wrongly or
    answer with a bare TypeError (an entry not str -> str; an empty name, passed on as "=value").
    An '=' in a name or a NUL byte it refuses itself, which start() reports as a RunnerError."""
    if not isinstance(env, Mapping) or "" in env or not all(isinstance(k, str) and isinstance(v, str)
                                                            for k, v in env.items()):
        check_env(env, where)


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
