"""A host's ask that its plugin serve on once the host died (for a later host to reattach), tied to one pipe.

Two variables, both set by a plugbay host's ProcessRunner (unless die_with_host=True):

- PLUGBAY_OUTLIVE_HOST=1, the ask as plugbay hosts made it before the pipe was named. A plugbay plugin from
  then reads it (Go's ParseBool; unset, PLUGBAY_HOST_SESSION alone asks) and serves on, as it did.
- PLUGBAY_OUTLIVE_PIPE=pipe:<st_dev>:<st_ino>, naming the pipe the host hands the plugin as stderr. A plugbay
  plugin of today serves on only when its own stderr is that pipe, and PLUGBAY_OUTLIVE_HOST does not say no
  (an explicit "0" still means stop).

The ask travels in the environment, which a go-plugin host passes on to its plugins whole: a Go host that a
plugbay host started hands its own plugins the name of the Go host's stderr pipe, not theirs, so they stop
when the Go host dies, as a Go plugin would (SIGPIPE at its next log line). A wrapper (``sh script`` running
the plugin without exec) hands the plugin the same pipe it got: the name still matches.

A third, PLUGBAY_OUTLIVE_GRACE, bounds the serving on: once its host died (its end of the stderr pipe closed),
a plugin asked to outlive it stops as on SIGTERM once no host has been connected for that many seconds in a
row (ASCII digits, a decimal point allowed: ``2``, ``2.5``; unset: OUTLIVE_GRACE, so an older plugbay host's
plugin stops too). ``none``: it serves on until told (a plugin left running, nothing stops it). A value that
reads as neither is the default.

Without the name, a plugin stops: "1" alone (a plugbay host from before the name) cannot be told from the
same inherited through a Go host (both carry PLUGBAY_HOST_SESSION too). Stopping wrongly costs a reattach
after a crash (a new plugin is started); serving on wrongly leaves a plugin nothing stops.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping

ENV_OUTLIVE_HOST = "PLUGBAY_OUTLIVE_HOST"
ENV_OUTLIVE_PIPE = "PLUGBAY_OUTLIVE_PIPE"
ENV_OUTLIVE_GRACE = "PLUGBAY_OUTLIVE_GRACE"
OUTLIVE_GRACE = 600.0  # seconds a plugin whose host died waits for a reattach, unless told
NO_GRACE = "none"  # PLUGBAY_OUTLIVE_GRACE's "serve on until told"
MAX_GRACE = 10**9  # seconds (some 31 years): more is None's "no limit"
# no sign, exponent, "_", space, nan or non-ASCII digit; compiled at its first use (re caches it), not at
# every plugin's import
_GRACE = r"[0-9]{1,10}(\.[0-9]{1,9})?"
_PREFIX = "pipe:"
_YES = ("1", "t", "T", "TRUE", "true", "True")  # Go's strconv.ParseBool, as plugins before the name read it


def pipe_name(fd: int) -> str:
    """The PLUGBAY_OUTLIVE_PIPE value naming the pipe open on ``fd`` (either end)."""
    facts = os.fstat(fd)
    return f"{_PREFIX}{facts.st_dev}:{facts.st_ino}"


def asks_outlive(value: str | None, default: bool) -> bool:
    """Whether a PLUGBAY_OUTLIVE_HOST value asks the plugin to outlive its host: unset, ``default``."""
    return default if value is None else value in _YES


def outlives(env: Mapping[str, str], fd: int) -> bool:
    """Whether ``env`` asks the plugin whose stderr is open on ``fd`` to serve on after its host dies."""
    named = env.get(ENV_OUTLIVE_PIPE)
    return named is not None and asks_outlive(env.get(ENV_OUTLIVE_HOST), True) and names_stderr(named, fd)


def grace_value(grace: float | None) -> str:
    """The PLUGBAY_OUTLIVE_GRACE value for ``grace`` seconds (0 to MAX_GRACE; None: serve on until told)."""
    return NO_GRACE if grace is None else f"{grace:.6f}".rstrip("0").rstrip(".")


def read_grace(value: str | None) -> tuple[float | None, str]:
    """A PLUGBAY_OUTLIVE_GRACE value (from the environment: untrusted) as seconds (None: serve on until told),
    and what was wrong with it ("" when nothing: then the default is taken)."""
    if value is None:
        return OUTLIVE_GRACE, ""
    if value == NO_GRACE:
        return None, ""
    if re.fullmatch(_GRACE, value) is None:
        return OUTLIVE_GRACE, (f"{ENV_OUTLIVE_GRACE}={value[:40]!r} is not seconds (a decimal number such as 2"
                               f" or 2.5) nor {NO_GRACE!r}; taking the default {OUTLIVE_GRACE:g} s without a"
                               " host once the host died")
    return float(value), ""


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
