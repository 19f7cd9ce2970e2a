"""The engine timestamps on a followed container log: taken off each entry, and the reopen's replay dropped.

No engine here: entries shaped as the engine 20.10 sends them (one stdcopy frame
per entry, ``<RFC3339Nano> <data>``; a line over 16 KiB comes as several entries
with one timestamp), and malformed ones, since the log is input from outside.
"""

from __future__ import annotations

import threading
from decimal import Decimal
from collections.abc import Iterator
from typing import Any

import pytest

from plugbay.runners.docker.logs import ContainerLogStream
from plugbay.runners.logstamps import EntryStamps, parse_stamp, split_entry

T0 = 1796175945 * 10**9  # 2026-12-02T01:45:45Z


def stamp(ns: int) -> bytes:
    import datetime

    seconds, fraction = divmod(ns, 10**9)
    day = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{day}.{fraction:09d}Z".encode()


def entry(ns: int, data: bytes) -> bytes:
    return stamp(ns) + b" " + data


def test_parse_stamp_reads_the_engines_format_and_offsets() -> None:
    assert stamp(T0) == b"2026-12-02T01:45:45.000000000Z"
    assert parse_stamp(b"2026-12-02T01:45:45.000000001Z") == T0 + 1
    assert parse_stamp(b"2026-12-02T01:45:45.123456789Z") == T0 + 123456789
    assert parse_stamp(b"2026-12-02T01:45:45.5Z") == T0 + 500_000_000
    assert parse_stamp(b"2026-12-02T01:45:45Z") == T0
    assert parse_stamp(b"2026-12-02T03:45:45.000000007+02:00") == T0 + 7
    assert parse_stamp(b"2026-12-01T23:15:45-02:30") == T0


@pytest.mark.parametrize("text", [
    b"", b"hello", b"2026-12-02", b"2026-12-02T01:45:45.123", b"2026-12-02 01:45:45Z", b"2026-13-02T01:45:45Z",
    b"2026-02-31T01:45:45Z", b"2026-12-02T24:00:00Z", b"2026-12-02T01:45:45.1234567890Z", b"2026-12-02T01:45:45+25:00",
    b"2026-12-02T01:45:45.\xd9\xa1Z", "2026-12-02T01:45:4\u0665Z".encode(), b"0000-00-00T00:00:00Z",
    b"2026-12-02T01:45:45Zjunk", b"9999-12-31T23:59:59.999999999-23:59", b"\x00" * 40,
])
def test_a_malformed_timestamp_is_none(text: bytes) -> None:
    parsed = parse_stamp(text)
    if text.startswith(b"9999"):  # well-formed, just far away
        assert parsed is not None
    else:
        assert parsed is None


@pytest.mark.parametrize("raw", [
    b"", b"no stamp here\n", b"2026-12-02T01:45:45.000000000Z", b"2026-12-02T01:45:45.000000000Z\n",
    b"x" * 100, b"2026-13-02T01:45:45.000000000Z data\n", b" leading space\n", b"\xff\xfe 2026\n",
    b"2026-12-02T01:45:45.000000000Z" + b"0" * 20 + b" late space\n",
])
def test_an_entry_without_a_timestamp_is_data_unchanged(raw: bytes) -> None:
    assert split_entry(raw) == (None, raw)
    stamps = EntryStamps()
    assert stamps.take(raw) == raw
    assert stamps.last is None and stamps.since() is None


def test_the_data_after_the_timestamp_is_kept_byte_for_byte() -> None:
    for data in (b"line\n", b"", b" two  spaces \r\n", b"\x00\xff\n", b"2026-12-02T01:45:45.000000000Z inner\n"):
        assert split_entry(entry(T0, data)) == (T0, data)


def test_since_never_rounds_past_the_last_timestamp() -> None:
    for ns in (T0 + 999_999_999, T0 + 1, T0 + 123_456_789, T0 + 500_000_000, T0 + 999, T0 + 1000, T0 + 1001):
        stamps = EntryStamps()
        stamps.take(entry(ns, b"x\n"))
        since = stamps.since()
        assert since is not None
        sent = Decimal(str(since)) * 10**9  # the SDK puts str(since) in the query; the engine reads its digits
        assert sent <= ns and ns - sent < 2_000  # within 2 µs, never after


def test_a_replay_is_dropped_up_to_the_entries_passed_on_and_what_follows_is_kept() -> None:
    stamps = EntryStamps()
    # two entries share the last timestamp: the pieces of a long line, or lines taken in at once
    first = [entry(T0, b"a\n"), entry(T0 + 5, b"long-1"), entry(T0 + 5, b"long-2")]
    assert [stamps.take(e) for e in first] == [b"a\n", b"long-1", b"long-2"]
    stamps.reopened()
    replay = [entry(T0 + 4, b"older\n"), entry(T0 + 5, b"long-1"), entry(T0 + 5, b"long-2"),
              entry(T0 + 5, b"long-3\n"), entry(T0 + 6, b"b\n")]
    assert [stamps.take(e) for e in replay] == [None, None, None, b"long-3\n", b"b\n"]
    assert stamps.last == T0 + 6


def test_a_second_reopen_before_anything_new_skips_the_same_entries() -> None:
    stamps = EntryStamps()
    for data in (b"p1", b"p2"):
        stamps.take(entry(T0, data))
    stamps.reopened()
    assert stamps.take(entry(T0, b"p1")) is None  # broke again in the middle of the replay
    stamps.reopened()
    assert [stamps.take(entry(T0, d)) for d in (b"p1", b"p2", b"p3\n")] == [None, None, b"p3\n"]


def test_a_malformed_entry_in_a_replay_is_passed_on_and_the_replay_goes_on() -> None:
    stamps = EntryStamps()
    stamps.take(entry(T0, b"a\n"))
    stamps.reopened()
    assert stamps.take(b"garbage\n") == b"garbage\n"
    assert stamps.take(entry(T0, b"a\n")) is None
    assert stamps.take(entry(T0 + 1, b"b\n")) == b"b\n"


def test_without_a_timestamp_seen_a_reopen_drops_nothing() -> None:
    stamps = EntryStamps()
    stamps.take(b"unstamped\n")
    stamps.reopened()
    assert stamps.take(entry(T0, b"a\n")) == b"a\n"


class _Stream:
    def __init__(self, entries: list[bytes], breaks: bool) -> None:
        self._entries, self._breaks = entries, breaks
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        yield from self._entries
        if self._breaks:
            raise ConnectionResetError("the engine connection dropped")
        self.closed.wait(10)  # follow: open until the stream is closed

    def close(self) -> None:
        self.closed.set()


class _Api:
    """Two log requests: the first breaks after three entries, the second replays from ``since``."""

    def __init__(self, log: list[bytes]) -> None:
        self.log, self.calls = log, []  # type: list[bytes], list[dict[str, Any]]
        self.streams: list[_Stream] = []

    def logs(self, container: str, **kwargs: Any) -> _Stream:
        self.calls.append(kwargs)
        since = kwargs.get("since")
        if since is None:
            stream = _Stream(self.log[:3], breaks=True)
        else:
            stream = _Stream([e for e in self.log if (split_entry(e)[0] or since * 1e9) >= since * 1e9], breaks=False)
        self.streams.append(stream)
        return stream


def test_a_reopened_stream_passes_each_line_on_once_and_malformed_entries_as_they_are() -> None:
    log = [entry(T0, b"one\n"), entry(T0 + 10, b"two-"), entry(T0 + 10, b"and-more\n"), entry(T0 + 10, b"three\n"),
           b"not stamped\n", entry(T0 + 20, b"four\n")]
    api = _Api(log)
    stream = ContainerLogStream(api, "c0ffee", "stdout", running=lambda: True)
    try:
        got, lines = [], stream.lines()
        for line in lines:
            got.append(line)
            if line == "four":
                break
    finally:
        stream.close()
    assert got == ["one", "two-and-more", "three", "not stamped", "four"]
    assert [c["timestamps"] for c in api.calls] == [True, True]
    assert "since" not in api.calls[0] and api.calls[1]["since"] * 1e9 <= T0 + 10


def test_a_tty_log_is_read_without_timestamps() -> None:
    api = _Api([b"a\n", b"b\n", b"c\n", b"d\n"])
    stream = ContainerLogStream(api, "c0ffee", "stdout", running=lambda: False, tty=True)
    try:
        assert list(stream.lines()) == ["a", "b", "c"]
    finally:
        stream.close()
    assert api.calls == [{"stdout": True, "stderr": False, "stream": True, "follow": True, "timestamps": False}]
