"""Bounded output lines: a plugin writing tens of MB without a newline cannot grow the host.

The splitter is checked alone, then under the process runner and the host's
log pump with a real child process, then under the Docker runner with a real
container (its Kubernetes twin is in test_kubernetes_runner).
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from plugbay.core.host.logs import LogPump
from plugbay.core.transport.lines import MAX_LINE, LineSplitter, cap_line, split_lines, truncated_marker, was_cut
from plugbay.runners.base import LaunchSpec
from plugbay.runners.process import ProcessRunner

PY = sys.executable
FLOOD = 30 * 1024 * 1024  # 30 MiB on one line
# Writes FLOOD bytes without a newline in 1 MiB pieces, then a short line and one without newline.
FLOOD_SCRIPT = (f"import os; [os.write(2, b'x' * (1 << 20)) for _ in range({FLOOD >> 20})];"
                " os.write(2, b'\\nafter\\r\\nlast')")


def test_splitter_keeps_lines_whole_across_chunks() -> None:
    s = LineSplitter(limit=8)
    assert s.feed(b"ab") == []
    assert s.feed(b"c\r\nde\nf") == ["abc", "de"]
    assert s.flush() == ["f"]
    assert s.flush() == []
    assert list(split_lines([b"x\n", b"", b"\n", b"y"])) == ["x", "", "y"]
    with pytest.raises(ValueError):
        LineSplitter(limit=0)


def test_splitter_whole_line_chunks_split_as_byte_by_byte_feeding_does() -> None:
    # A chunk of whole lines takes one decode and one split; it must give what the
    # careful path (here: one byte at a time) gives, bad UTF-8 and CRLF included.
    chunks = [b"a\n", b"one\r\ntwo\n\n", b"\xe2\x82\n\xf0\x9f\x98\x80ok\r\n", b"\xff\xfe\r\r\n", b"\n",
              "é€😀\n".encode(), b'{"@level":"debug","@message":"get"}\n' * 20]
    for chunk in chunks:
        slow = LineSplitter(limit=len(chunk))
        careful = [line for i in range(len(chunk)) for line in slow.feed(chunk[i:i + 1])]
        assert LineSplitter(limit=len(chunk)).feed(chunk) == careful
    # past the limit the chunk is cut as before, even when it ends with a newline
    assert LineSplitter(limit=4).feed(b"abcdefg\nhi\n") == ["abcd" + truncated_marker(3), "hi"]


def test_splitter_cuts_long_lines_with_a_marker_and_holds_at_most_the_limit() -> None:
    s = LineSplitter(limit=10)
    out: list[str] = []
    for _ in range(1000):
        out += s.feed(b"y" * 997)
        assert s.buffered <= 10
    out += s.feed(b"zz\nok\n")
    assert out == ["y" * 10 + truncated_marker(997 * 1000 + 2 - 10), "ok"]
    assert s.peak_buffered == 10
    s.feed(b"q" * 15)
    assert s.flush() == ["q" * 10 + truncated_marker(5)]  # an unfinished long line at the end too
    assert cap_line("short") == "short"
    assert cap_line("é" * 5, limit=3) == "ééé" + truncated_marker(4)


def test_a_handshake_streams_first_line_ends_at_once_when_it_passes_the_limit() -> None:
    # go-plugin's host gives up on stdout at 64 KiB without a newline: no handshake line can follow
    s = LineSplitter(limit=8, handshake_first=True)
    assert s.feed(b"abcdef") == []
    cut = s.feed(b"ghijk")
    assert cut == ["abcdefgh" + truncated_marker(3)] and was_cut(cut[0])  # not held until a newline comes
    assert s.feed(b"lm") == [] and s.buffered == 0  # the rest of that line is dropped
    assert s.feed(b"no\nnext\n") == ["next"]
    assert s.feed(b"0123456789") == []  # later lines are logs: held and cut at their newline, as before
    assert s.feed(b"\n") == ["01234567" + truncated_marker(2)]
    whole = LineSplitter(limit=8, handshake_first=True)  # a first line within the limit comes as it is
    assert whole.feed(b"12345678\n0123456789") == ["12345678"]
    assert LineSplitter(limit=8).feed(b"abcdefghijk") == []
    # the cut is the splitter's fact, not the text's: a plugin may print the marker itself
    assert not was_cut("ab" + truncated_marker(3)) and not was_cut("1|1|unix|/s|grpc")
    assert was_cut(cap_line("abcdefghijk", limit=8)) and not was_cut(cap_line("abcdefgh", limit=8))


@pytest.mark.parametrize("reader", ["loop", "read-first-line", "iterator"])
def test_process_runner_hands_on_an_overlong_first_stdout_line_at_once(reader: str) -> None:
    runner = ProcessRunner([PY, "-c", "import os, time; os.write(1, b'a' * 300000); time.sleep(60)"])
    runner.start(LaunchSpec(env={}))
    lines: queue.Queue[str] = queue.Queue()
    try:
        if reader == "iterator":
            threading.Thread(target=_put_each, args=(runner.stdout_lines(), lines, ""), daemon=True).start()
        else:
            runner.follow_output(lambda which, line: lines.put(line) if which == "stdout" else None, lambda _: None,
                                 time.monotonic() + 10 if reader == "read-first-line" else None)
        first = lines.get(timeout=10)  # before: held until a newline that never comes
    finally:
        runner.kill(0)
    assert first.startswith("a" * MAX_LINE) and was_cut(first)


@pytest.mark.timeout(60)
def test_a_containers_overlong_first_stdout_line_is_handed_on_at_once() -> None:
    from plugbay.runners.docker.logs import ContainerLogStream

    release = threading.Event()

    class Api:  # the engine's log API: 16 KiB entries, as its json-file driver cuts a long line, then nothing
        def logs(self, *args: Any, **kwargs: Any) -> Iterator[bytes]:
            yield from [b"a" * 16384] * 5
            release.wait(30)

    streams = [ContainerLogStream(Api(), "c0ffee", which, tty=True) for which in ("stdout", "stderr")]
    try:
        out = queue.Queue[str]()
        for stream in streams:
            threading.Thread(target=_put_each, args=(stream.lines(), out, f"{stream.which}:"), daemon=True).start()
        assert out.get(timeout=10) == "stdout:" + "a" * MAX_LINE + truncated_marker(16384)
        deadline = time.monotonic() + 10  # stderr took all five entries (its splitter is at its cap)...
        while streams[1].splitter.peak_buffered < MAX_LINE and time.monotonic() < deadline:
            time.sleep(0.01)
        assert streams[1].splitter.peak_buffered == MAX_LINE
        assert out.empty()  # ...and its long line waits for its newline, as a log line does
    finally:
        release.set()
        for stream in streams:
            stream.close()


def _put_each(lines: Iterator[str], into: queue.Queue[str], prefix: str) -> None:
    for line in lines:
        into.put(prefix + line if prefix else line)  # the line itself: a CutLine stays one


def test_process_runner_bounds_a_flood_without_newline() -> None:
    runner = ProcessRunner([PY, "-c", FLOOD_SCRIPT])
    runner.start(LaunchSpec(env={}))
    try:
        err = list(runner.stderr_lines())  # stdout is left unread: nothing comes there
        assert runner.wait(60) == 0
    finally:
        runner.kill()
    assert err == ["x" * MAX_LINE + truncated_marker(FLOOD - MAX_LINE), "after", "last"]
    assert max(s.peak_buffered for s in runner.splitters) <= MAX_LINE
    assert runner.stderr_tail()[-1] == "last"


def test_host_log_pump_caps_lines_from_any_runner(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []
    pump = LogPump("flood", raw_sink=seen.append)
    pump.handle("a" * (MAX_LINE + 5))
    assert seen == ["a" * MAX_LINE + truncated_marker(5)]
    assert pump.tail() == seen


@pytest.mark.docker
@pytest.mark.usefixtures("plugbay_docker")
def test_docker_runner_bounds_a_flood_without_newline() -> None:
    from plugbay.runners.docker import DockerRunner

    # 6 MiB: under the json-file driver's 10 MB rotation, which can make a follower miss what comes
    # after it on a loaded engine (the CI lost "after" once); still 96 times the line cap
    runner = DockerRunner("plugbay-base:bookworm", entrypoint=["python3", "-c", FLOOD_SCRIPT.replace(
        f"range({FLOOD >> 20})", "range(6)")])
    runner.start(LaunchSpec(env={}))
    try:
        err = list(runner.stderr_lines())
        assert runner.wait(60) == 0
        pump: Any = runner._pumps["stderr"]
        assert max(pump.splitter.peak_buffered, 1) <= MAX_LINE
    finally:
        runner.kill()
    # The count of dropped bytes (and a last line without newline) is the engine's business.
    assert err[0].startswith("x" * MAX_LINE + "…[truncated ") and err[0].endswith(" bytes]")
    assert len(err[0]) < MAX_LINE + 40 and "after" in err
