"""The connection's write timeout (hashicorp/yamux's ConnectionWriteTimeout) against real sockets whose
peer stops reading: a frame that cannot be written for that long ends the session with
ConnectionWriteTimeoutError, wakes every waiter and closes the socket, with or without a keepalive.

The timeout is set small (0.5 s) and every wait is bounded by a few seconds.
"""

from __future__ import annotations

import fcntl
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.resilience_util import wait_until

from plugbay.core.plugin.netconfig import keepalive_figures
from plugbay.core.transport.keepalive import Keepalive
from plugbay.core.transport.muxhost import HostMux
from plugbay.core.transport.yamux import Session, StreamClosed
from plugbay.core.transport.ystream import _HDR, ACK, PING, SYN, WINDOW_UPDATE
from plugbay.errors import BrokerClosedError, ConfigError, ConnectionWriteTimeoutError

_TIMEOUT = 0.5
_BIG = 0x7FFFFFFF  # a send window that never runs out: only the socket can stop a writer


def _tcp_pair(small: bool = True) -> tuple[socket.socket, socket.socket]:
    """(ours, the peer's) over loopback TCP; ``small``: little buffering, so a peer that stops reading
    blocks our writers at once."""
    with socket.socket() as listener:
        if small:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the accepted end's
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        ours = socket.create_connection(listener.getsockname(), timeout=10)
        ours.settimeout(None)
        if small:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        listener.settimeout(10)
        peer, _ = listener.accept()
    return ours, peer


def _in_thread(step: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run ``step`` on a thread: its outcome (a result or the exception) lands in the list."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(step())
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            outcome.append(exc)
    thread = threading.Thread(target=run, name="plugbay-test-wto", daemon=True)
    thread.start()
    return thread, outcome


def stalled_session(ours: socket.socket, peer: socket.socket, write_timeout: float,
                    name: str) -> Iterator[tuple[Session, socket.socket]]:
    """A client session on ``ours`` whose ``peer`` the test drives (it stops reading); ended after."""
    session = Session(ours, client=True, on_stream=lambda s: s.reset(), name=name, write_timeout=write_timeout)
    try:
        yield session, peer
    finally:
        session.abort("test over")
        peer.close()


@pytest.fixture()
def stalled() -> Iterator[tuple[Session, socket.socket]]:
    """A client session (write timeout 0.5 s) whose peer answered its first stream with a huge window,
    then stopped reading; the keepalive is off (nothing ticks it)."""
    yield from stalled_session(*_tcp_pair(), _TIMEOUT, "t-wto")


def test_a_writer_to_a_peer_that_stops_reading_ends_the_session_and_wakes_every_waiter(
        stalled: tuple[Session, socket.socket]) -> None:
    session, peer = stalled
    stream = session.open()
    other = session.open()
    peer.sendall(_HDR.pack(0, WINDOW_UPDATE, ACK, stream.id, _BIG))
    assert wait_until(lambda: stream._send_window > _BIG, 5)

    started = time.monotonic()
    writer, wrote = _in_thread(lambda: stream.write(bytes(16 << 20)))  # far more than the buffers hold
    reader, read = _in_thread(other.read)  # waits for data that never comes
    time.sleep(0.2)  # the writer is stuck in the socket: the next ones wait for the send lock
    second, wrote_second = _in_thread(lambda: other.write(b"x"))
    opener, opened = _in_thread(session.open)
    for thread in (writer, reader, second, opener):
        thread.join(4)
        assert not thread.is_alive(), "a waiter stayed stuck on a peer that stopped reading"
    took = time.monotonic() - started

    assert isinstance(wrote[0], ConnectionWriteTimeoutError), wrote
    assert isinstance(wrote[0], StreamClosed) and isinstance(wrote[0], BrokerClosedError)
    assert isinstance(wrote[0], TimeoutError)
    assert _TIMEOUT <= took, took  # the writer was cut off by the write timeout (the joins above: hang guards)
    assert session.closed and "write timeout" in session.close_reason, session.close_reason
    assert read == [b""]  # a reader ends as at a reset
    for outcome in (wrote_second, opened):  # waiters for the send lock get the same error
        assert isinstance(outcome[0], ConnectionWriteTimeoutError), outcome
    with pytest.raises(ConnectionWriteTimeoutError):
        session.open()
    session._reader.join(5)
    assert not session._reader.is_alive() and session._sock.fileno() == -1  # the socket is closed


def test_a_writer_waiting_for_window_gets_the_same_error(stalled: tuple[Session, socket.socket]) -> None:
    session, peer = stalled
    stream = session.open()
    starved = session.open()
    peer.sendall(_HDR.pack(0, WINDOW_UPDATE, ACK, stream.id, _BIG))
    assert wait_until(lambda: stream._send_window > _BIG, 5)
    with starved._cond:
        starved._send_window = 0  # the peer gave it nothing more: its writer waits for window
    waiting, got = _in_thread(lambda: starved.write(b"y"))
    writer, wrote = _in_thread(lambda: stream.write(bytes(16 << 20)))
    for thread in (writer, waiting):
        thread.join(4)
        assert not thread.is_alive()
    assert isinstance(wrote[0], ConnectionWriteTimeoutError), wrote
    assert isinstance(got[0], ConnectionWriteTimeoutError), got


def test_a_spliced_frame_the_peer_does_not_take_times_out(stalled: tuple[Session, socket.socket]) -> None:
    session, peer = stalled
    assert session.can_splice
    stream = session.open()
    peer.sendall(_HDR.pack(0, WINDOW_UPDATE, ACK, stream.id, _BIG))
    assert wait_until(lambda: stream._send_window > _BIG, 5)
    alive, wrote, took, reason = spliced_write_stuck(session, stream, 30)  # 30 s: a hang guard only
    assert not alive, "a spliced frame stayed stuck on a peer that stopped reading"
    assert isinstance(wrote[0], ConnectionWriteTimeoutError), wrote
    assert _TIMEOUT <= took, took  # cut off by the write timeout, once the peer took nothing for that long
    assert f"connection write timeout: the peer took no byte for {_TIMEOUT:g} s" in reason, reason


def spliced_write_stuck(session: Session, stream: Any, wait: float) -> tuple[bool, list[Any], float, str]:
    """A 1 MiB spliced frame written on ``stream`` (its peer stopped reading) by a thread, waited for
    ``wait`` s: (still writing, its outcome, the seconds taken, the session's close reason then). The
    session is ended after, before the pipe closes: a writer still stuck on it ends first."""
    r, w = os.pipe()
    try:
        size = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
        os.write(w, bytes(size))
        started = time.monotonic()
        writer, wrote = _in_thread(lambda: stream.write_piped(r, size))
        writer.join(wait)
        return writer.is_alive(), wrote, time.monotonic() - started, session.close_reason
    finally:
        session.abort("test over")
        os.close(r)
        os.close(w)


def test_answers_the_reader_cannot_send_end_the_session_too() -> None:
    # control frames: the reader's answers wait for a short-lived sender (LateControl), which now
    # gives up after the write timeout instead of holding the send lock for good
    ours, peer = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    session = Session(ours, client=False, on_stream=lambda s: s.reset(), name="t-wto-late",
                      write_timeout=_TIMEOUT)
    try:
        peer.sendall(b"".join(_HDR.pack(0, PING, SYN, 0, i) for i in range(5000)))  # never reads the answers
        assert wait_until(lambda: session.closed, 15), "the reader's answers wait for good"  # a hang guard
        assert "write timeout" in session.close_reason, session.close_reason
        session._reader.join(5)
        assert session._sock.fileno() == -1
        with pytest.raises(ConnectionWriteTimeoutError):
            session.open()
    finally:
        session.abort("test over")
        peer.close()


def test_a_peer_that_reads_slowly_but_steadily_is_kept() -> None:
    # the timeout is "no progress for that long", not "a frame in that long": each 64 KiB read
    # frees room, so the writer of 1 MiB goes on although it takes longer than the timeout
    ours, peer = _tcp_pair()
    session = Session(ours, client=True, on_stream=lambda s: s.reset(), name="t-wto-slow", write_timeout=_TIMEOUT)
    try:
        stream = session.open()
        peer.sendall(_HDR.pack(0, WINDOW_UPDATE, ACK, stream.id, _BIG))
        assert wait_until(lambda: stream._send_window > _BIG, 5)
        writer, wrote = _in_thread(lambda: stream.write(bytes(1 << 20)))
        got = 0
        started = time.monotonic()
        peer.settimeout(5)
        while writer.is_alive() and time.monotonic() - started < 20:
            got += len(peer.recv(65536))
            time.sleep(0.01)
        writer.join(5)
        assert wrote == [None] and not session.closed, (wrote, session.close_reason)
        assert time.monotonic() - started > _TIMEOUT
    finally:
        session.abort("test over")
        peer.close()


def test_the_host_side_takes_it_from_its_keepalive_figures_and_releases_a_writer_with_the_keepalive_off() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    mux = HostMux("tcp", "%s:%d" % listener.getsockname(), timeout=5,
                  keepalive=Keepalive.of((math.inf, 10.0, _TIMEOUT), "mux_keepalive"))
    silent, _ = listener.accept()  # never read, never written
    try:
        session = mux._session
        assert session is not None and session.write_timeout == _TIMEOUT

        def write_until_stuck() -> None:
            for _ in range(64):  # 16 MiB in first windows: more than loopback's buffers hold
                session.open().write(bytes(256 * 1024))
        writer, wrote = _in_thread(write_until_stuck)
        writer.join(10)
        assert not writer.is_alive(), "a writer stayed stuck with the keepalive off"
        assert isinstance(wrote[0], ConnectionWriteTimeoutError), wrote
        assert session.closed and "write timeout" in session.close_reason
    finally:
        mux.close()
        silent.close()
        listener.close()


def test_the_figures() -> None:
    assert Keepalive.of((30, 10), "k").write_timeout == 10.0  # go's ConnectionWriteTimeout
    assert Keepalive.of((30, 10, 2.5), "k").write_timeout == 2.5
    assert Keepalive.of((math.inf, 10, math.inf), "k").write_timeout == math.inf
    assert keepalive_figures("30,10,5", "X") == (30.0, 10.0, 5.0)
    assert keepalive_figures("30,10", "X") == (30.0, 10.0)
    for bad in ((30, 10, 0), (30, 10, -1), (30, 10, float("nan")), (30, 10, "5"), (30, 10, 5, 1)):
        with pytest.raises(ConfigError):
            Keepalive.of(bad, "k")
    for text in ("30,10,0", "30,10,x", "30,10,5,1"):
        with pytest.raises(ConfigError):
            keepalive_figures(text, "X")
    a, b = socket.socketpair()
    try:
        with pytest.raises(ConfigError):
            Session(a, client=True, on_stream=lambda s: s.reset(), write_timeout=0, start=False)
    finally:
        a.close()
        b.close()
