"""Pod logs as the API serves them: each line stamped by the kubelet (RFC3339Nano and a space) when
it came; ``timestamps=true`` keeps the stamps, ``sinceSeconds``/``sinceTime`` start the log later."""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterator


def stamp_now() -> bytes:
    """Now in RFC3339Nano as Go writes it: UTC, the fraction's trailing zeros dropped."""
    secs, frac = divmod(time.time_ns(), 1_000_000_000)
    digits = f"{frac:09d}".rstrip("0")
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + ("." + digits if digits else "") + "Z").encode()


def stamp_ns(stamp: bytes) -> int | None:
    """An RFC3339(Nano) UTC stamp in ns since the epoch; None if it is not one."""
    try:
        secs = calendar.timegm(time.strptime(stamp[:19].decode(), "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, UnicodeDecodeError):
        return None
    frac = stamp[20:-1] if stamp[19:20] == b"." else b""
    return secs * 1_000_000_000 + int(frac.ljust(9, b"0")[:9] or b"0")


def log_since(q: dict[str, str]) -> int | None:
    """The kubelet's ``since`` (ns) of a log request: sinceSeconds back from now, or sinceTime in whole
    seconds (the API's metav1.Time drops any fraction)."""
    if "sinceSeconds" in q:
        return time.time_ns() - int(q["sinceSeconds"]) * 1_000_000_000
    if "sinceTime" in q:
        found = stamp_ns(q["sinceTime"].encode())
        return None if found is None else found - found % 1_000_000_000
    return None


def log_lines(chunks: Iterator[bytes], timestamps: bool, since: int | None) -> Iterator[bytes]:
    """A box's stamped log as the API serves it: whole lines from ``since`` on, stamped if asked."""
    partial = b""

    def served(lines: list[bytes]) -> bytes:
        out = []
        for line in lines:
            stamp, _, data = line.partition(b" ")
            at = stamp_ns(stamp)
            if since is not None and at is not None and at < since:
                continue
            out.append(line if timestamps or at is None else data)
        return b"".join(out)

    for chunk in chunks:
        lines = (partial + chunk).split(b"\n")
        partial = lines.pop()
        if data := served([line + b"\n" for line in lines]):
            yield data
    if partial and (data := served([partial])):
        yield data
