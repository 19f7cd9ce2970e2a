"""A container's log lines wait for a slow reader in a bounded buffer: the oldest go, and the host is told.

No engine here: the log request answers as the engine's does for a stopped
container (entries ``<RFC3339Nano> <data>``, then the stream's end).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from plugbay.runners.docker.logs import MAX_BUFFERED, ContainerLogStream

EXTRA = 2_500
STAMP = b"2026-01-01T00:00:00.000000000Z "


class _Api:
    """The log request, answered with ``lines`` entries at once: the reader falls behind by all of them."""

    def __init__(self, lines: int) -> None:
        self.lines = lines

    def logs(self, container: str, **kwargs: Any) -> Iterator[bytes]:
        assert kwargs["timestamps"] and kwargs["follow"]
        return self._entries()

    def _entries(self) -> Iterator[bytes]:
        for i in range(self.lines):
            yield STAMP + b"line %d " % i + b"x" * 200 + b"\n"


def _read_after_the_end(stream: ContainerLogStream, caplog: pytest.LogCaptureFixture) -> list[str]:
    stream.join(30)
    assert stream.done  # every line is in; the reader took none yet
    with caplog.at_level(logging.WARNING, logger="plugbay.runners.docker"):
        return list(stream.lines())


def test_a_reader_that_falls_behind_keeps_the_newest_lines_and_hears_of_the_dropped(
        caplog: pytest.LogCaptureFixture) -> None:
    total = MAX_BUFFERED + EXTRA
    stream = ContainerLogStream(_Api(total), "c0ffee\x1b]0;x\x07", "stderr", running=lambda: False)
    try:
        got = _read_after_the_end(stream, caplog)
    finally:
        stream.close()
    assert len(got) == MAX_BUFFERED
    assert got[0].startswith(f"line {EXTRA} ") and got[-1].startswith(f"line {total - 1} ")
    said = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"{EXTRA} lines of container c0ffee") and "stderr" in said[0], said
    # the name is written with escapes: no terminal control reaches the host's log
    assert "\x1b" not in said[0] and "\x07" not in said[0] and "\\x1b]0;x\\x07" in said[0], said


def test_lines_within_the_bound_are_all_passed_on_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    stream = ContainerLogStream(_Api(1_000), "c0ffee", "stdout", running=lambda: False)
    try:
        got = _read_after_the_end(stream, caplog)
    finally:
        stream.close()
    assert [line.split(" ")[1] for line in got] == [str(i) for i in range(1_000)]
    assert not [r for r in caplog.records if "dropped" in r.getMessage()]
