"""The timestamp on each entry of a followed log: where a reopened log picks up again.

Docker (``timestamps``) and the Kubernetes API (``timestamps=true``) start each
log entry (a line, or with Docker a 16 KiB piece of a longer one) with the time
the engine or kubelet took it in, in RFC3339Nano and that side's clock, and one
space. Without a demultiplexing TTY, each chunk the Docker SDK yields is one
such entry (one frame of the engine's stream); a pod's log is split into lines.
The pieces of one long line share their timestamp, and so can lines taken in at once.

When the log's connection drops while the container runs, the log is asked for
again from (at or before) the last timestamp seen: the engine sends everything
at or after it (in its own clock, so no host clock skew loses lines). What this
host already has is dropped from that replay: entries older than the last
timestamp seen, and as many of those stamped exactly with it as were already
passed on. So a replay from further back (the Kubernetes API's sinceTime has
whole seconds, sinceSeconds is relative) costs bandwidth, never a line twice.

The log is input from outside: an entry without a timestamp that parses is
passed on as it is, and counts for nothing.
"""

from __future__ import annotations

import calendar
import datetime
import re

# "2026-12-02T01:02:03.123456789Z" (the engine always writes nine digits; fewer are taken too)
_STAMP = re.compile(rb"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")
_LONGEST = len("2006-01-02T15:04:05.000000000+07:00")
# The SDK takes ``since`` as a float, which holds about 0.25 µs at today's epoch: asking from
# a microsecond earlier never rounds past the last entry seen (those before it are dropped here)
_SINCE_MARGIN_NS = 1000


def parse_stamp(text: bytes) -> int | None:
    """``text`` as an RFC3339 timestamp, in nanoseconds since the epoch; None if it is not one."""
    found = _STAMP.fullmatch(text)
    if found is None:
        return None
    year, month, day, hour, minute, second = (int(part) for part in found.groups()[:6])
    try:
        datetime.time(hour, minute, second)
        datetime.date(year, month, day)
    except ValueError:
        return None
    zone = found.group(8)
    offset = 0
    if zone != b"Z":
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 23 or minutes > 59:
            return None
        offset = (hours * 60 + minutes) * 60 * (1 if zone[:1] == b"+" else -1)
    try:
        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset
    except (OverflowError, ValueError):
        return None
    fraction = (found.group(7) or b"").ljust(9, b"0")
    return seconds * 1_000_000_000 + int(fraction)


def split_entry(entry: bytes) -> tuple[int | None, bytes]:
    """(timestamp in ns, the entry's data) of one log entry; (None, entry unchanged) without a timestamp."""
    space = entry.find(b" ", 0, _LONGEST + 1)
    if space < 0:
        return None, entry
    stamp = parse_stamp(entry[:space])
    if stamp is None:
        return None, entry
    return stamp, entry[space + 1:]


class EntryStamps:
    """Takes the timestamps off a followed log's entries, and drops what a reopened log replays."""

    def __init__(self) -> None:
        self.last: int | None = None  # the latest timestamp passed on (ns)
        self._at_last = 0  # entries passed on that carried exactly ``last``
        self._to_skip: int | None = None  # while a reopened log replays: entries at ``last`` still to drop

    def since(self) -> float | None:
        """The ``since`` for reopening the log (seconds, engine clock); None before any timestamp."""
        if self.last is None:
            return None
        return max(self.last - _SINCE_MARGIN_NS, 1) / 1e9

    def reopened(self) -> None:
        """The log is asked for again from :meth:`since`: what it sends first may be a replay."""
        if self.last is not None:
            self._to_skip = self._at_last

    def take(self, entry: bytes) -> bytes | None:
        """The data of ``entry`` to pass on, or None when the entry is one passed on before."""
        stamp, data = split_entry(entry)
        if stamp is None:
            return data
        last = self.last
        if self._to_skip is not None and last is not None:
            if stamp < last:
                return None
            if stamp == last and self._to_skip > 0:
                self._to_skip -= 1
                return None
            self._to_skip = None  # the first entry this host has not had: the replay is over
        if last is None or stamp > last:
            self.last, self._at_last = stamp, 1
        elif stamp == last:
            self._at_last += 1
        return data
