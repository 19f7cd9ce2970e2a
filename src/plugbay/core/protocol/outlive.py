"""PLUGBAY_OUTLIVE_HOST: a host's ask that its plugin serve on once the host died, tied to one stderr pipe.

A plugbay host (ProcessRunner) names the pipe it hands the plugin as stderr, ``pipe:<st_dev>:<st_ino>``,
and the plugin honours the ask only when its own stderr is that pipe. The ask travels in the environment,
which a go-plugin host passes on to its plugins whole: a Go host that a plugbay host started hands its own
plugins the name of the Go host's stderr pipe, not theirs, so they stop when the Go host dies, as a Go
plugin would (SIGPIPE at its next log line). A wrapper (``sh script`` running the plugin without exec)
hands the plugin the same pipe it got: the name still matches.

Every other value asks nothing: "0"; and "1", which a plugbay host of the forty-second session set
without a name, but which a plugin cannot tell from one inherited through a Go host (both carry the same
PLUGBAY_HOST_SESSION too). Stopping wrongly costs a reattach after a crash (a new plugin is started);
serving on wrongly leaves a plugin nothing stops, so a plugin stops unless the pipe is named.
"""

from __future__ import annotations

import os
import stat

_PREFIX = "pipe:"
_YES = ("1", "t", "T", "TRUE", "true", "True")  # Go's strconv.ParseBool, as the variable's old form was read


def pipe_name(fd: int) -> str:
    """The value that asks the plugin whose stderr is the pipe open on ``fd`` (either end) to outlive its host."""
    facts = os.fstat(fd)
    return f"{_PREFIX}{facts.st_dev}:{facts.st_ino}"


def asks_outlive(value: str | None, default: bool) -> bool:
    """Whether a value set for a host's plugin (env=) asks it to outlive the host: unset, ``default``."""
    return default if value is None else value in _YES or value.startswith(_PREFIX)


def names_stderr(value: str, fd: int) -> bool:
    """Whether ``value`` names the pipe open on ``fd`` (the plugin's own stderr)."""
    dev, sep, ino = value.removeprefix(_PREFIX).partition(":")
    if not value.startswith(_PREFIX) or not sep or len(value) > 64:  # length: no int() of a huge digit run
        return False
    if not (dev.isascii() and dev.isdigit() and ino.isascii() and ino.isdigit()):
        return False
    try:
        facts = os.fstat(fd)
    except OSError:  # no stderr at all
        return False
    return stat.S_ISFIFO(facts.st_mode) and (facts.st_dev, facts.st_ino) == (int(dev), int(ino))
