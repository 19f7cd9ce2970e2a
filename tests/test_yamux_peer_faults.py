"""A yamux peer that breaks the protocol: the session says why it ended, refuses at the header, never dies silently.

hashicorp/yamux logs a session its peer broke (bad version, bad frame type, data past a window, a
stream opened twice, a GoAway with an error code) at ERR; plugbay ended such sessions without a
word, so every stream of the connection broke at once and nothing said why. A DATA frame larger
than its stream's window was refused only once its whole body had arrived (hashicorp/yamux
refuses it at the header). The peer here is a raw socket writing hand-built frames to a real
Session; the host side is a real HostMux dialing a raw listener.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from pathlib import Path

import pytest

from tests.netflood import split_frames
from tests.resilience_util import wait_until

from plugbay.core.transport.muxhost import HostMux
from plugbay.core.transport.yamux import (
    ACK,
    DATA,
    GO_AWAY,
    MAX_WINDOW,
    PING,
    SYN,
    WINDOW,
    WINDOW_UPDATE,
    Session,
)

_HDR = struct.Struct(">BBHII")
SYN_1 = _HDR.pack(0, WINDOW_UPDATE, SYN, 1, 0)

VIOLATIONS = {
    "bad version": ([_HDR.pack(1, WINDOW_UPDATE, SYN, 1, 0)], "protocol error: yamux version 1"),
    "bad frame type": ([_HDR.pack(0, 9, 0, 1, 0)], "protocol error: frame type 9"),
    "data past the window": ([SYN_1, _HDR.pack(0, DATA, 0, 1, WINDOW + 1), b"x" * (WINDOW + 1)],
                             "protocol error: stream 1 received more than its window"),
    "a stream opened twice": ([SYN_1, SYN_1], "protocol error: stream 1 opened twice"),
    "GoAway protocol error": ([_HDR.pack(0, GO_AWAY, 0, 0, 1)],
                              "the peer went away with an error (GoAway code 1: protocol error)"),
    "GoAway unknown code": ([_HDR.pack(0, GO_AWAY, 0, 0, 0xDEADBEEF)],
                            "the peer went away with an error (GoAway code 3735928559: an unknown code)"),
}


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("plugbay")]


@pytest.mark.parametrize("case", list(VIOLATIONS))
def test_a_session_the_peer_breaks_logs_a_warning_with_its_name_and_reason(
        case: str, caplog: pytest.LogCaptureFixture) -> None:
    frames, reason = VIOLATIONS[case]
    caplog.set_level(logging.DEBUG)
    a, b = socket.socketpair()
    session = Session(a, client=False, on_stream=lambda s: None, name="t-faulty")
    try:
        for frame in frames:
            try:
                b.sendall(frame)
            except OSError:
                break  # refused before all of it was sent (data past the window: at its header)
        session._reader.join(10)
        assert session.closed and session.close_reason == reason
        warned = _warnings(caplog)
        assert len(warned) == 1, warned
        assert warned[0].startswith(f"t-faulty: {reason}; the connection is dropped"), warned
    finally:
        session.close()
        b.close()


@pytest.mark.parametrize("how", ["peer closes", "normal GoAway then close", "local close"])
def test_an_ordinary_end_logs_no_warning(how: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    a, b = socket.socketpair()
    session = Session(a, client=False, on_stream=lambda s: None, name="t-ordinary")
    try:
        b.sendall(SYN_1)  # a stream open when it ends
        assert wait_until(lambda: session.open_streams == 1, 10)
        if how == "local close":
            session.close()
        else:
            if how == "normal GoAway then close":
                b.sendall(_HDR.pack(0, GO_AWAY, 0, 0, 0))
            b.shutdown(socket.SHUT_WR)
            session._reader.join(10)
        assert session.closed
        assert _warnings(caplog) == []
    finally:
        session.close()
        b.close()


def _frames_sent_refusing(*frames: bytes, name: str) -> list[tuple[int, int, int, int]]:
    """The frames a server session sent its peer, who sent ``frames`` (the last a header whose body never
    comes), before it ended: it must refuse that header at once, not wait for the body."""
    a, b = socket.socketpair()
    session = Session(a, client=False, on_stream=lambda s: None, name=name)
    try:
        for frame in frames:
            b.sendall(frame)
        session._reader.join(10)
        assert session.closed, "the reader waits for a body it must refuse"
        assert session.close_reason == "protocol error: stream 1 received more than its window"
        b.settimeout(10)
        data = b""
        while chunk := b.recv(65536):
            data += chunk
        sent, _ = split_frames(data)
        return sent
    finally:
        session.close()
        b.close()


def test_data_past_the_streams_window_is_refused_at_its_header(caplog: pytest.LogCaptureFixture) -> None:
    # as hashicorp/yamux (readData: length > recvWindow): the body is never waited for, nor
    # buffered; the peer is told with a GoAway (protocol error). Larger than the stream's window
    # yet under MAX_WINDOW, the frame passed the first check and the reader waited for all of it.
    frames = _frames_sent_refusing(SYN_1, _HDR.pack(0, DATA, 0, 1, MAX_WINDOW), name="t-window")
    assert (WINDOW_UPDATE, ACK, 1, 0) in frames
    assert frames[-1] == (GO_AWAY, 0, 0, 1), frames


def test_a_stream_opening_frame_past_a_new_streams_window_is_refused_at_its_header() -> None:
    # the SYN on the data frame itself: a new stream's window is WINDOW, and hashicorp/yamux refuses
    # more at the header (incomingStream, then readData). The reader waited for up to MAX_WINDOW of
    # body, held by a peer that never sends it, before it found the stream's window overrun.
    frames = _frames_sent_refusing(_HDR.pack(0, DATA, SYN, 1, WINDOW + 1), name="t-syn-window")
    assert frames[-1] == (GO_AWAY, 0, 0, 1), frames


def test_a_frame_within_the_window_is_taken_whole() -> None:
    # the header check must not refuse what fits exactly
    a, b = socket.socketpair()
    session = Session(a, client=False, on_stream=lambda s: None, name="t-fits")
    try:
        b.sendall(SYN_1 + _HDR.pack(0, DATA, 0, 1, WINDOW) + b"y" * WINDOW + _HDR.pack(0, PING, SYN, 0, 5))
        b.settimeout(10)
        data = b""
        while (PING, ACK, 0, 5) not in split_frames(data)[0]:
            chunk = b.recv(65536)
            assert chunk, session.close_reason
            data += chunk
        assert not session.closed, session.close_reason
    finally:
        session.close()
        b.close()


def test_no_thread_for_the_late_answers_ends_the_session_with_that_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    # The reader hands frames it cannot send at once (the send lock busy) to a short-lived
    # thread; when none could be started, the RuntimeError escaped the reader, and the session
    # ended as if the peer had closed it.
    start = threading.Thread.start

    def no_late_thread(thread: threading.Thread) -> None:
        if thread.name.endswith("-late"):
            raise RuntimeError("can't start new thread")
        start(thread)

    escaped: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: escaped.append(args.exc_value))
    a, b = socket.socketpair()
    session = Session(a, client=False, on_stream=lambda s: None, name="t-nothread")
    try:
        monkeypatch.setattr(threading.Thread, "start", no_late_thread)
        with session._wlock:  # another writer holds the send lock: the stream's ACK must wait
            b.sendall(SYN_1)
            session._reader.join(10)
        monkeypatch.setattr(threading.Thread, "start", start)
        assert session.closed
        assert session.close_reason.startswith("no thread to send the frames that answer the peer's"), \
            session.close_reason
        assert escaped == []
        assert session.open_streams == 0
    finally:
        monkeypatch.setattr(threading.Thread, "start", start)
        session.close()
        b.close()


def _host_redials_after(tmp_path: Path, caplog: pytest.LogCaptureFixture, frame: bytes | None) -> list[str]:
    """A HostMux whose first connection the raw 'plugin' ends (``frame``, or a plain close); the
    log records of its redial."""
    caplog.set_level(logging.DEBUG)
    path = str(tmp_path / "p.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(4)
    listener.settimeout(10)
    mux = HostMux("unix", path, timeout=10)
    conns: list[socket.socket] = []
    try:
        conns.append(listener.accept()[0])
        session = mux.session
        assert session is not None
        if frame is None:
            conns[0].close()
        else:
            conns[0].sendall(frame)
        assert wait_until(lambda: session.closed, 10)
        caplog.clear()
        mux.wait_session(timeout=10)
        conns.append(listener.accept()[0])  # it dialed again
        return [f"{r.levelname} {r.getMessage()}" for r in caplog.records if r.name == "plugbay.mux"]
    finally:
        mux.close()
        for conn in conns:
            conn.close()
        listener.close()


def test_the_host_warns_when_it_redials_a_plugin_that_broke_the_protocol(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    records = _host_redials_after(tmp_path, caplog, _HDR.pack(1, PING, SYN, 0, 1))
    assert ("WARNING multiplexed connection lost (protocol error: yamux version 1); dialing the plugin again"
            in records), records


def test_the_host_redials_a_plugin_that_closed_without_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    records = _host_redials_after(tmp_path, caplog, None)
    assert any(r.startswith("DEBUG multiplexed connection lost") for r in records), records
    assert not any(r.startswith("WARNING") for r in records), records
