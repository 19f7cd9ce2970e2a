"""The yamux stream timeouts when no thread can be had (plugbay.core.transport.yclose).

The timeouts' thread was named running before its start(): when start() raised ("can't start new
thread") no later stream started one, open() raised a bare RuntimeError and left its stream in the
session with no SYN sent, and close_write() marked the stream closed before raising, so no FIN went
and the bridge (which resets a stream on OSError or StreamClosed) never reset it. A timer thread
ended by a non-Exception stayed named running too. The peer here is a raw socket; the timers are a
fresh StreamTimers (Timed reads the module's TIMERS at each call), so no other test's thread is used.
"""

from __future__ import annotations

import math
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from plugbay.core.transport import yclose
from plugbay.core.transport.yamux import FIN, RST, SYN, WINDOW_UPDATE, Session
from plugbay.errors import NoThreadError

_HDR = struct.Struct(">BBHII")
_START = threading.Thread.start


def _no_timer_thread(thread: threading.Thread) -> None:
    if thread.name == "plugbay-yamux-timeouts":
        raise RuntimeError("can't start new thread")
    _START(thread)


@pytest.fixture()
def timers(monkeypatch: pytest.MonkeyPatch) -> yclose.StreamTimers:
    fresh = yclose.StreamTimers()
    monkeypatch.setattr(yclose, "TIMERS", fresh)
    return fresh


@pytest.fixture()
def peer() -> Iterator[tuple[Session, socket.socket]]:
    a, b = socket.socketpair()
    session = Session(a, client=True, on_stream=lambda s: s.reset(), name="t-nothread")
    b.settimeout(10)
    try:
        yield session, b
    finally:
        session.close()
        b.close()


def _header(sock: socket.socket) -> tuple[int, int, int, int]:
    header = bytearray()
    while len(header) < _HDR.size:
        got = sock.recv(_HDR.size - len(header))
        assert got, "the session closed the connection"
        header += got
    return _HDR.unpack(header)[1:]  # type: ignore[return-value]


def test_open_with_no_timer_thread_is_refused_typed_and_leaves_nothing(
        monkeypatch: pytest.MonkeyPatch, timers: yclose.StreamTimers, peer: tuple[Session, socket.socket]) -> None:
    session, raw = peer
    monkeypatch.setattr(threading.Thread, "start", _no_timer_thread)
    with pytest.raises(NoThreadError, match="no thread for the yamux stream timeouts"):
        session.open()
    assert session._streams == {}  # no stream the peer never heard of, held for the session's life
    monkeypatch.setattr(threading.Thread, "start", _START)
    stream = session.open()  # threads again: this open starts the timer thread
    assert timers._thread is not None and timers._thread.is_alive()
    assert _header(raw) == (WINDOW_UPDATE, SYN, stream.id, 0)  # the first frame: the refused open sent no SYN
    assert not session.closed


def test_close_write_with_no_timer_thread_still_sends_its_fin_then_resets(
        monkeypatch: pytest.MonkeyPatch, timers: yclose.StreamTimers, peer: tuple[Session, socket.socket]) -> None:
    session, raw = peer
    session.stream_open_timeout = math.inf  # only the close timeout needs a thread here
    stream = session.open()
    assert _header(raw) == (WINDOW_UPDATE, SYN, stream.id, 0)
    monkeypatch.setattr(threading.Thread, "start", _no_timer_thread)
    stream.close_write()
    monkeypatch.setattr(threading.Thread, "start", _START)
    assert _header(raw) == (WINDOW_UPDATE, FIN, stream.id, 0)  # the close went out
    assert _header(raw) == (WINDOW_UPDATE, RST, stream.id, 0)  # and, with no timeout to bound the peer's side,
    assert stream.done and session._streams == {}  # the stream ended as its timeout would have ended it
    assert timers._thread is None and not session.closed


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
