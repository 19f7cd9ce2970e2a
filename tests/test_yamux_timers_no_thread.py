"""The yamux stream timeouts when no thread can be had (plugbay.core.transport.yclose).

The timeouts' thread was named running before its start(): when start() raised ("can't start new
thread") no later stream started one, open() raised a bare RuntimeError and left its stream in the
session with no SYN sent, and close_write() marked the stream closed before raising, so no FIN went
and the bridge never reset it. Now streams go on untimed (as go-plugin 1.0.1's always are: failing the
open would leave an acknowledged knock routing the peer's next stream to it, and resetting a half-closed
stream would lose its reply), their timeouts stay queued, and the next add() starts the thread. A timer
thread ended by a non-Exception stayed named running too. The peer here is a raw socket; the timers are a
fresh StreamTimers (Timed reads the module's TIMERS at each call), so no other test's thread is used.
"""

from __future__ import annotations

import logging
import math
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from plugbay.core.transport import yclose
from plugbay.core.transport.yamux import FIN, RST, SYN, WINDOW_UPDATE, Session
from tests.yamux_util import raw_peer_session

_HDR = struct.Struct(">BBHII")
_START = threading.Thread.start


def _no_timer_thread(thread: threading.Thread) -> None:
    if thread.name == "plugbay-yamux-timeouts":
        raise RuntimeError("can't start new thread")
    _START(thread)


@pytest.fixture()
def timers(monkeypatch: pytest.MonkeyPatch) -> Iterator[yclose.StreamTimers]:
    fresh = yclose.StreamTimers()
    monkeypatch.setattr(yclose, "TIMERS", fresh)
    yield fresh
    with fresh._cond:  # what a test left queued (a kick, a stream's timeout): its thread then leaves, idle
        fresh._queues.clear()
        thread = fresh._thread
    if thread is not None:
        thread.join(10)
        assert not thread.is_alive(), "the timer thread did not leave"


@pytest.fixture()
def peer() -> Iterator[tuple[Session, socket.socket]]:
    with raw_peer_session("t-nothread", 10) as pair:
        yield pair


def _header(sock: socket.socket) -> tuple[int, int, int, int]:
    header = bytearray()
    while len(header) < _HDR.size:
        got = sock.recv(_HDR.size - len(header))
        assert got, "the session closed the connection"
        header += got
    return _HDR.unpack(header)[1:]  # type: ignore[return-value]


def _queued(timers: yclose.StreamTimers, key: object) -> bool:
    return any(key in queue for queue in timers._queues.values())


def test_open_with_no_timer_thread_goes_on_untimed_until_a_thread_can_be_had(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, timers: yclose.StreamTimers,
        peer: tuple[Session, socket.socket]) -> None:
    session, raw = peer
    caplog.set_level(logging.WARNING, logger="plugbay.yamux")
    monkeypatch.setattr(threading.Thread, "start", _no_timer_thread)
    first = session.open()  # not refused: its SYN goes, and its open timeout waits for a thread
    second = session.open()
    assert _header(raw) == (WINDOW_UPDATE, SYN, first.id, 0)
    assert _header(raw) == (WINDOW_UPDATE, SYN, second.id, 0)
    assert session._streams.keys() == {first.id, second.id}
    assert _queued(timers, (first, "open")) and _queued(timers, (second, "open")) and timers._thread is None
    said = [r for r in caplog.records if "no thread for the yamux stream timeouts" in r.getMessage()]
    assert len(said) == 1, caplog.text  # once, not per stream
    monkeypatch.setattr(threading.Thread, "start", _START)
    third = session.open()  # threads again: this open starts the timer thread, which times the queued ones
    assert timers._thread is not None and timers._thread.is_alive()
    assert _queued(timers, (first, "open")) and _queued(timers, (third, "open"))
    assert not session.closed


def test_close_write_with_no_timer_thread_sends_its_fin_and_keeps_the_stream_for_its_reply(
        monkeypatch: pytest.MonkeyPatch, timers: yclose.StreamTimers, peer: tuple[Session, socket.socket]) -> None:
    session, raw = peer
    session.stream_open_timeout = math.inf  # only the close timeout needs a thread here
    session.stream_close_timeout = 0.5
    stream = session.open()
    assert _header(raw) == (WINDOW_UPDATE, SYN, stream.id, 0)
    monkeypatch.setattr(threading.Thread, "start", _no_timer_thread)
    stream.close_write()
    assert _header(raw) == (WINDOW_UPDATE, FIN, stream.id, 0)  # the close went out
    assert not stream.done and stream.id in session._streams  # not reset: the peer's reply may be on its way
    assert _queued(timers, (stream, "close")) and timers._thread is None
    monkeypatch.setattr(threading.Thread, "start", _START)
    timers.add("kick", 60, lambda: None)  # the next add() starts the thread: the queued close timeout runs
    assert _header(raw) == (WINDOW_UPDATE, RST, stream.id, 0)  # the peer never closed: reset, as timed
    assert not session.closed


def test_a_timer_thread_ended_by_a_non_exception_lets_the_next_add_start_one(
        monkeypatch: pytest.MonkeyPatch, timers: yclose.StreamTimers) -> None:
    escaped: list[type[BaseException] | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: escaped.append(args.exc_type))

    def leave() -> None:
        raise SystemExit  # not an Exception: the thread's loop does not catch it

    timers.add("first", 0, leave)
    first = timers._thread
    assert first is not None
    first.join(10)
    assert not first.is_alive() and escaped == [SystemExit]
    ran = threading.Event()
    timers.add("second", 0, ran.set)
    assert ran.wait(10), "no thread ran the next action"
    assert timers._thread is not first
