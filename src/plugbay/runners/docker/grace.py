"""The sweep's grace: what plugbay made moments ago is left, since someone may be about to use it.

A network a DockerRunner just made has no container on it until the runner's create a moment later, and an
image plugbay just built is untagged until its tag is set: to a sweep both look abandoned. Only what the
engine says was made at least the grace ago (its ``Created`` field) goes. That field is untrusted input:
one missing or not a timestamp proves no age, and the thing stays (a grace of 0 reads no age). The age is
taken on the engine's own clock (``SystemTime`` in its info): a remote engine's clock may be off this
machine's, and a clock behind would make a network made a moment ago look old.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from plugbay.errors import ConfigError
from plugbay.runners.docker.connect import engine_call, engine_failures

GRACE = 60.0  # seconds: far beyond a start's or a build's step between making a thing and using it

# Go's RFC3339Nano as the engine writes it: seconds' fraction of 1-9 digits, Z or a +hh:mm offset
_STAMP = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
                    r"(?:(Z)|([+-])([0-9]{2}):([0-9]{2}))", re.ASCII)


def engine_time(value: Any) -> datetime | None:
    """An engine's timestamp as an aware datetime; None for anything else (and for Go's zero time: unset)."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    found = _STAMP.fullmatch(value)
    if found is None:
        return None
    year, month, day, hour, minute, second = (int(part) for part in found.groups()[:6])
    micro = int((found.group(7) or "").ljust(6, "0")[:6])
    if found.group(8):
        offset = timedelta(0)
    else:
        hours, minutes = int(found.group(10)), int(found.group(11))
        if hours > 23 or minutes > 59:
            return None
        offset = timedelta(hours=hours, minutes=minutes) * (-1 if found.group(9) == "-" else 1)
    try:
        at = datetime(year, month, day, hour, minute, second, micro, tzinfo=timezone(offset))
    except ValueError:  # a 13th month, a 61st second
        return None
    return None if year <= 1 else at


def checked_grace(seconds: Any) -> float:
    """``seconds`` as a grace: a number of seconds, 0 or more (inf: nothing ever goes)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or math.isnan(seconds) or seconds < 0:
        raise ConfigError(f"grace must be a number of seconds, 0 or more (0: no grace), not {seconds!r}")
    return float(seconds)


class Grace:
    """One sweep's judge of ages against the engine's clock, read once, at the first thing it judges: after
    the sweep listed what it judges, so nothing listed was made after that reading."""

    def __init__(self, client: Any, seconds: Any) -> None:
        self.seconds = checked_grace(seconds)
        self._client = client
        self._now: datetime | None = None
        self._clock_unread: str | None = None  # why the engine's clock could not be read

    def withheld(self, created: Any) -> str | None:
        """Why a thing the engine says was made at ``created`` stays (too young, or no age to tell); None:
        made at least the grace ago."""
        if self.seconds <= 0:
            return None
        made = engine_time(created)
        if made is None:
            return f"its creation time ({str(created)[:40]!r}) is no timestamp, so its age is unknown"
        now = self._engine_now()
        if now is None:
            return f"its age is unknown: {self._clock_unread}"
        age = (now - made).total_seconds()
        if age < 0:
            return "the engine says it was made after the engine's current time"
        if age < self.seconds:
            return (f"made {age:.0f} s ago, within the {self.seconds:g} s grace (a start or build may be about"
                    " to use it)")
        return None

    def _engine_now(self) -> datetime | None:
        if self._now is None and self._clock_unread is None:
            try:
                info = engine_call(self._client.info, "read the engine's clock")
            except engine_failures() as exc:
                self._clock_unread = f"the engine's clock could not be read ({exc})"
                return None
            self._now = engine_time((info or {}).get("SystemTime"))
            if self._now is None:
                self._clock_unread = "the engine's clock (SystemTime in `docker info`) is no timestamp"
        return self._now
