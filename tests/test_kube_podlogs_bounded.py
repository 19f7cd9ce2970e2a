"""A pod's stderr lines wait for a slow reader in a bounded buffer: the oldest go, and the host is told."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from plugbay.runners.docker.logs import MAX_BUFFERED  # the one bound both runners buffer to
from plugbay.core.transport.lines import drain
from plugbay.runners.kubernetes.logs import PodLogs

HANDSHAKE = "1|1|tcp|127.0.0.1:4000|grpc"
EXTRA = 2_500


class FloodResponse:
    """A followed pod log (timestamps=true): the handshake, then more lines than the buffer holds, then its end."""

    def __init__(self, lines: int) -> None:
        self.lines = lines

    def stream(self, amt: object = None, decode_content: bool = False) -> Iterator[bytes]:
        stamp = b"2026-01-01T00:00:00.000000000Z "
        yield stamp + HANDSHAKE.encode() + b"\n"
        for start in range(0, self.lines, 500):
            yield b"".join(stamp + b"line %d " % i + b"x" * 200 + b"\n"
                           for i in range(start, min(start + 500, self.lines)))

    def release_conn(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


def _no_reopen(since: int | None) -> object:
    raise AssertionError("the pod ended: no reopen")


def test_a_reader_that_falls_behind_keeps_the_newest_lines_and_hears_of_the_dropped(
        caplog: pytest.LogCaptureFixture) -> None:
    total = MAX_BUFFERED + EXTRA
    logs = PodLogs("flood")
    logs.follow(FloodResponse(total), _no_reopen, still_running=lambda: False)
    assert logs._thread is not None
    logs._thread.join(30)
    assert not logs._thread.is_alive()
    assert logs.stderr.qsize() <= MAX_BUFFERED  # the reader took nothing yet: memory stays bounded
    assert next(drain(logs.stdout)) == HANDSHAKE
    with caplog.at_level(logging.WARNING, logger="plugbay.runners.kubernetes"):
        got = list(drain(logs.stderr))
    assert len(got) == MAX_BUFFERED
    assert got[0].startswith(f"line {EXTRA} ") and got[-1].startswith(f"line {total - 1} ")
    said = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(said) == 1 and f"{EXTRA} " in said[0] and "flood" in said[0], said
    logs.close()


def test_lines_within_the_bound_are_all_passed_on_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    logs = PodLogs("calm")
    logs.follow(FloodResponse(1_000), _no_reopen, still_running=lambda: False)
    with caplog.at_level(logging.WARNING, logger="plugbay.runners.kubernetes"):
        got = list(drain(logs.stderr))
    assert [line.split(" ")[1] for line in got] == [str(i) for i in range(1_000)]
    assert not [r for r in caplog.records if "dropped" in r.getMessage()]
    logs.close()


def test_the_warning_names_the_pod_named_after_the_logs_were_made(caplog: pytest.LogCaptureFixture) -> None:
    logs = PodLogs("")  # as the runner makes them, before it names the pod
    logs.name = "named-later"
    logs.follow(FloodResponse(MAX_BUFFERED + 1), _no_reopen, still_running=lambda: False)
    assert logs._thread is not None
    logs._thread.join(30)
    with caplog.at_level(logging.WARNING, logger="plugbay.runners.kubernetes"):
        assert len(list(drain(logs.stderr))) == MAX_BUFFERED
    said = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert said == [f"1 lines of pod named-later's log were dropped: the host read them slower than the plugin"
                    f" wrote (at most {MAX_BUFFERED} wait)"], said
    logs.close()
