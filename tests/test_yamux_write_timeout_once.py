"""The connection's write timeout ends a stuck frame once the peer took no byte for that long, not twice
that: a blocking send that made some progress before the peer stopped returns short at the socket's
timeout, and the old next send waited a whole timeout again before the error. Real sockets (unix and
loopback TCP) whose peer stops reading; every path a frame goes by (a data frame, a spliced one, the
reader's answers that a short-lived sender takes).

The figure is 1.5 s. The error's message says "the peer took no byte for 1.5 s", so that is the wait
the writer may have, plus up to two of the kernel's wake-up steps (an eighth of it each: one to see the
peer stop, one to see the figure pass) and slack for a loaded machine: under 2.7 s from the writer's
start. The old code could not be that fast: it waited two full kernel timeouts, at least 3 s.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.resilience_util import wait_until
from tests.test_yamux_write_timeout import _BIG, _in_thread, _tcp_pair, spliced_write_stuck, stalled_session

from plugbay.core.transport.yamux import Session
from plugbay.core.transport.ystream import _HDR, ACK, SYN, WINDOW_UPDATE
from plugbay.errors import ConnectionWriteTimeoutError

_TIMEOUT = 3.0  # 1.5 left ~0.5 s of the bound to a loaded machine's scheduling
_BOUND = _TIMEOUT * 1.8  # the stated wait, two wake-up steps and slack; the old code took >= 2 x _TIMEOUT


def _pair(family: str) -> tuple[socket.socket, socket.socket]:
    if family == "tcp":
        return _tcp_pair()
    ours, peer = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return ours, peer


@pytest.fixture(params=["unix", "tcp"])
def stalled(request: pytest.FixtureRequest) -> Iterator[tuple[Session, socket.socket]]:
    """A client session whose peer gave its first stream a huge window, then stopped reading."""
    yield from stalled_session(*_pair(request.param), _TIMEOUT, "t-wto-once")


def _windowed(session: Session, peer: socket.socket) -> int:
    stream = session.open()
    peer.sendall(_HDR.pack(0, WINDOW_UPDATE, ACK, stream.id, _BIG))
    assert wait_until(lambda: stream._send_window > _BIG, 5)
    return stream.id


def test_a_data_frame_cut_short_by_a_peer_that_stopped_reading_ends_after_one_timeout(
        stalled: tuple[Session, socket.socket]) -> None:
    session, peer = stalled
    sid = _windowed(session, peer)
    stream = session._streams[sid]
    started = time.monotonic()
    # frames of a window each, larger than the socket holds: the first one goes out in part, then stops
    writer, wrote = _in_thread(lambda: stream.write(bytes(16 << 20)))
    writer.join(2 * _BOUND)
    took = time.monotonic() - started
    assert not writer.is_alive() and isinstance(wrote[0], ConnectionWriteTimeoutError), wrote
    assert f"no byte for {_TIMEOUT:g} s" in session.close_reason, session.close_reason
    assert took < _BOUND, f"the write timeout of {_TIMEOUT} s ended the frame after {took:.2f} s"


def test_a_spliced_frame_cut_short_ends_after_one_timeout(stalled: tuple[Session, socket.socket]) -> None:
    session, peer = stalled
    assert session.can_splice
    sid = _windowed(session, peer)
    alive, wrote, took, _ = spliced_write_stuck(session, session._streams[sid], 2 * _BOUND)
    assert not alive and isinstance(wrote[0], ConnectionWriteTimeoutError), wrote
    assert took < _BOUND, f"the write timeout of {_TIMEOUT} s ended the spliced frame after {took:.2f} s"


@pytest.mark.parametrize("family", ["unix", "tcp"])
def test_the_readers_answers_cut_short_end_the_session_after_one_timeout(family: str) -> None:
    ours, peer = _pair(family)
    session = Session(ours, client=False, on_stream=lambda s: s.reset(), name="t-wto-once-late",
                      write_timeout=_TIMEOUT)
    try:
        # streams it opens, each answered with an ACK and (refused) an RST, which it never reads:
        # more than the socket holds, so the sender that takes what the reader cannot send at once
        # gets a batch of them out in part, then waits
        opened = b"".join(_HDR.pack(0, WINDOW_UPDATE, SYN, sid, 0) for sid in range(1, 10000, 2))
        sender = threading.Thread(target=peer.sendall, args=(opened,), daemon=True)
        started = time.monotonic()
        sender.start()
        assert wait_until(lambda: session.closed, 2 * _BOUND, step=0.01), "the reader's answers wait for good"
        took = time.monotonic() - started
        assert "write timeout" in session.close_reason, session.close_reason
        assert took < _BOUND, f"the write timeout of {_TIMEOUT} s ended the answers' sender after {took:.2f} s"
        sender.join(5)
    finally:
        session.abort("test over")
        peer.close()
