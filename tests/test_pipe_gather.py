"""A plugin pipe that gives whole lines in quick succession rests a moment between reads (procio.PipeFollower).

The loop thread reads a chatty plugin's lines (one per call) in gathered chunks instead of waking per
line. What must still hold: every line arrives, in order; a pipe that went quiet is watched again; a
flood is read on without resting; the end of the pipe (or stop()) during a rest still reads the rest,
closes the pipe and reports the end once.

Real pipes, written by real child processes or by the test, read on a private loop thread.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import weakref

import pytest

from plugbay.core.transport import ioloop
from plugbay.core.transport.lines import LineSplitter
from plugbay.runners.base import LaunchSpec
from plugbay.runners.procio import PipeFollower
from plugbay.runners.process import ProcessRunner
from tests.thread_util import plugbay_threads, wait_for


class _Follow:
    """A PipeFollower on a private loop, recording what it hands on."""

    def __init__(self, fd: int) -> None:
        self.loop = ioloop.IOLoop("plugbay-io-gather")
        self.lines: list[str] = []
        self.ends = 0
        self.closed = threading.Event()
        self.fd = fd
        self.follower = PipeFollower(fd, LineSplitter(), self.lines.append, self._ended, self._close,
                                     loop=self.loop)

    def _ended(self) -> None:
        self.ends += 1

    def _close(self) -> None:
        os.close(self.fd)
        self.closed.set()

    def finish(self) -> None:
        wait_for(lambda: not self.loop.running, "the idle loop to end")
        assert self.loop.join_idle(5)
        assert "plugbay-io-gather" not in plugbay_threads()


def _child(script: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)


def _followed_to_the_end(script: str) -> _Follow:
    """Follow the stdout of a child running ``script`` until it exited 0 and its pipe ended."""
    proc = _child(script)
    assert proc.stdout is not None
    follow = _Follow(os.dup(proc.stdout.fileno()))
    proc.stdout.close()
    try:
        assert proc.wait(30) == 0
        wait_for(lambda: follow.ends == 1, "the end of the pipe")
    finally:
        proc.kill()
        proc.wait()
    return follow


def test_lines_written_one_by_one_all_arrive_in_order_and_the_end_is_reported_once() -> None:
    follow = _followed_to_the_end("import sys, time\nfor i in range(300):\n"
                                  "    sys.stdout.write(f'line {i}\\n'); sys.stdout.flush(); time.sleep(0.0005 * (i % 3))")
    assert follow.lines == [f"line {i}" for i in range(300)]
    assert follow.closed.is_set() and follow.ends == 1
    follow.finish()


def test_a_pipe_that_went_quiet_is_watched_again() -> None:
    r, w = os.pipe()
    follow = _Follow(r)
    try:
        for n in range(5):  # each write finds the pipe watched again after its quiet spell
            os.write(w, f"after a pause {n}\n".encode())
            wait_for(lambda n=n: len(follow.lines) == n + 1, f"line {n}", step=0.02)
            threading.Event().wait(0.05)
        os.write(w, b"a\nb\n")
        wait_for(lambda: follow.lines[-2:] == ["a", "b"], "a two-line write")
    finally:
        os.close(w)
    wait_for(lambda: follow.ends == 1, "the end after the writer closed")
    assert follow.lines == [f"after a pause {n}" for n in range(5)] + ["a", "b"]
    follow.finish()


def test_a_flood_is_read_through_whole() -> None:
    follow = _followed_to_the_end("import sys\nfor i in range(20000):\n    sys.stdout.write(f'{i:08d}' * 12 + '\\n')\n")
    assert follow.lines == [f"{i:08d}" * 12 for i in range(20000)]
    follow.finish()


@pytest.mark.parametrize("how", ["stop", "end"])
def test_stop_or_the_end_while_resting_reads_the_rest_and_ends_once(how: str) -> None:
    r, w = os.pipe()
    follow = _Follow(r)
    try:
        for line in ("first", "second"):  # two reads in quick succession: the second begins a rest
            os.write(w, f"{line}\n".encode())
            wait_for(lambda line=line: follow.lines[-1:] == [line], line, step=0.001)
        os.write(w, b"third\nunfinished")  # written during the rest
        if how == "stop":
            follow.follower.stop()
        else:
            os.close(w)
        wait_for(lambda: follow.ends == 1, "the end")
    finally:
        if how == "stop":
            os.close(w)
    assert follow.lines == ["first", "second", "third", "unfinished"] and follow.closed.is_set()
    threading.Event().wait(0.05)  # a rest's timer, had it survived, would have fired by now
    assert follow.ends == 1
    follow.finish()


def test_a_pipe_that_ends_while_resting_is_let_go_while_the_loop_lives_on() -> None:
    """The cancelled rest timer must not keep the ended follower (and its line handler's owner) alive."""
    keep_r, keep_w = os.pipe()
    loop = ioloop.IOLoop("plugbay-io-gather")
    keeper = loop.add(keep_r, lambda: True)  # another plugin's pipe: the loop stays in use throughout
    owners = []
    try:
        for _ in range(5):
            r, w = os.pipe()

            class Owner:  # what a line handler keeps alive (a Client, in a host)
                def __init__(self) -> None:
                    self.lines: list[str] = []
                    self.ended = threading.Event()

                def line(self, line: str) -> None:
                    self.lines.append(line)

                def end(self) -> None:
                    self.ended.set()

            owner = Owner()
            follower = PipeFollower(r, LineSplitter(), owner.line, owner.end,
                                    lambda r=r: os.close(r), loop=loop)
            for line in ("first", "second"):  # two reads in quick succession: a rest, most often
                os.write(w, f"{line}\n".encode())
                wait_for(lambda line=line, owner=owner: owner.lines[-1:] == [line], line, step=0.001)
            follower.stop()
            wait_for(owner.ended.is_set, "the end")
            os.close(w)
            owners.append(weakref.ref(owner))
            del owner, follower
        wait_for(lambda: (gc.collect(), all(ref() is None for ref in owners))[1], "the ended followers to be freed", timeout=2)
    finally:
        keeper.cancel()
        wait_for(lambda: not loop.running, "the idle loop to end")
        os.close(keep_r)
        os.close(keep_w)
    assert loop.join_idle(5)


def test_a_plugin_that_dies_right_after_chatty_lines_has_them_read_before_its_exit_is_told() -> None:
    """The exit notice (a pidfd on the same loop) must not overtake the lines a resting pipe holds."""
    script = ("import os, time\nfor i in range(6):\n    os.write(2, f'chatter {i}\\n'.encode()); time.sleep(0.001)\n"
              "os.write(2, b'last words\\n')\nos._exit(3)\n")
    for _ in range(20):  # the pipe rests after two quick lines; the exit comes within the rest most often
        runner = ProcessRunner([sys.executable, "-c", script])
        runner.start(LaunchSpec(env={}))
        told: list[tuple[int, list[str]]] = []
        try:
            watch = runner.watch_exit(lambda code: told.append((code, runner.stderr_tail())))
            ends = runner.follow_output(lambda which, line: None, lambda which: None)
            wait_for(lambda: bool(told), "the exit notice", step=0.005)
            code, tail = told[0]
            assert code == 3 and tail[-1:] == ["last words"], tail
            assert ends.join(10)
            watch.cancel()
        finally:
            runner.kill(0)


class _CountingLoop(ioloop.IOLoop):
    """A private loop that counts the rests its followers take (each rest is one call_later)."""

    rests = 0

    def call_later(self, delay: float, func: ioloop.Callback) -> ioloop.Timer:
        self.rests += 1
        return super().call_later(delay, func)


def test_a_flood_of_small_writes_is_not_held_back_by_rests() -> None:
    """Small writes leave a full pipe short of a full chunk: a rest per pipeful would block the writer."""
    lines = 80_000  # 8 MB in 100-byte writes, as fast as the child can
    proc = _child(f"import os\nline = b'x' * 99 + b'\\n'\nfor i in range({lines}): os.write(1, line)\n")
    assert proc.stdout is not None
    fd = os.dup(proc.stdout.fileno())
    proc.stdout.close()
    loop = _CountingLoop("plugbay-io-gather")
    got: list[str] = []
    ended = threading.Event()
    PipeFollower(fd, LineSplitter(), got.append, ended.set, lambda: os.close(fd), loop=loop)
    try:
        assert proc.wait(60) == 0
        wait_for(ended.is_set, "the end of the flood")
        assert len(got) == lines
        # a rest per pipeful (about 64000 bytes of such writes) would be 125 or more
        assert loop.rests <= lines * 100 // (4 * 65536), loop.rests
    finally:
        proc.kill()
        proc.wait()
    wait_for(lambda: not loop.running, "the idle loop to end")
    assert loop.join_idle(5)
