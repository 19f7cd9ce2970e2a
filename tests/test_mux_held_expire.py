"""A held stream whose knock never came is reset without waiting for the send lock
(plugbay.core.transport.held): the host's accept loop that expires it also ticks the keepalive and
accepts the main channel's connections, and a writer stuck on a full socket may hold that lock for good.

The plugin is a raw unix socket that speaks yamux frames by hand and reads nothing until the test
says so; the host is a real HostMux. Its held streams are kept 0.3 s here instead of 10 s: the
stream expires well before the keepalive's first ping (1 s of quiet).
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.resilience_util import wait_until

from plugbay.core.transport.held import HeldStreams
from plugbay.core.transport.keepalive import Keepalive
from plugbay.core.transport.muxhost import HostMux
from plugbay.core.transport.yamux import Session, Stream, StreamClosed
from plugbay.core.transport.ystream import _HDR, ACK, DATA, RST, SYN, WINDOW_UPDATE

_HELD = 2  # the id of the stream the plugin opens before any knock (a server stream: even)
_WRITTEN = 4 << 20  # what the host's writer sends on its own stream: far more than the socket holds


@dataclass
class Stuck:
    mux: HostMux
    session: Session
    plugin: socket.socket  # the plugin's end: nothing read from it until a test reads
    stream: Stream  # the host's stream whose writer is stuck on the full socket
    writer: threading.Thread
    outcome: list[BaseException | None]


def _stuck(keepalive: Keepalive) -> Iterator[Stuck]:
    folder = tempfile.mkdtemp(prefix="plugbay-held-exp-", dir="/tmp")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(os.path.join(folder, "plugin.sock"))
    listener.listen(1)
    listener.settimeout(10)
    mux = HostMux("unix", os.path.join(folder, "plugin.sock"), timeout=5, keepalive=keepalive)
    plugin, _ = listener.accept()
    outcome: list[BaseException | None] = []
    writer: threading.Thread | None = None
    try:
        mux._held = HeldStreams(hold=0.3)  # before the plugin opens any stream
        session = mux.session
        assert session is not None
        stream = mux.open_stream()
        plugin.sendall(_HDR.pack(0, WINDOW_UPDATE, ACK, stream.id, _WRITTEN))
        assert wait_until(lambda: stream._send_window >= _WRITTEN, 5)

        def write() -> None:
            try:
                stream.write(bytes(_WRITTEN))
                outcome.append(None)
            except StreamClosed as exc:
                outcome.append(exc)
        writer = threading.Thread(target=write, name="plugbay-test-writer", daemon=True)
        writer.start()
        # stuck once its window stops going down (the socket full, the plugin not reading)
        last, still_since = -1, time.monotonic()
        while time.monotonic() - still_since < 0.3 and not outcome:
            if stream._send_window != last:
                last, still_since = stream._send_window, time.monotonic()
            time.sleep(0.02)
        assert not outcome and session._wlock.locked(), "the writer never got stuck"
        plugin.sendall(_HDR.pack(0, WINDOW_UPDATE, SYN, _HELD, 0))  # before any knock: the host holds it
        yield Stuck(mux, session, plugin, stream, writer, outcome)
    finally:
        plugin.close()  # frees a writer still stuck
        mux.close()
        listener.close()
        if writer is not None:
            writer.join(10)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def stuck_silent() -> Iterator[Stuck]:
    """No write timeout: only the keepalive can end the session."""
    yield from _stuck(Keepalive(interval=1.0, timeout=1.0, write_timeout=math.inf))


@pytest.fixture()
def stuck_quiet() -> Iterator[Stuck]:
    """Neither a keepalive nor a write timeout: the session lives until the test ends it."""
    yield from _stuck(Keepalive(interval=math.inf, timeout=10.0, write_timeout=math.inf))


def test_an_expiring_held_stream_behind_a_stuck_writer_does_not_stop_the_keepalive(stuck_silent: Stuck) -> None:
    s = stuck_silent
    assert wait_until(lambda: s.session.closed, 15), (
        "the keepalive stopped: the held stream's expiry waited on the send lock behind the stuck writer")
    assert "keepalive" in s.session.close_reason, s.session.close_reason
    s.writer.join(10)
    assert not s.writer.is_alive() and s.outcome and isinstance(s.outcome[0], StreamClosed), s.outcome
    assert s.mux._acceptor.is_alive()  # the accept loop goes on (the next connection dials again)


def test_the_expired_streams_reset_goes_out_behind_the_stuck_writers_frame(stuck_quiet: Stuck) -> None:
    s = stuck_quiet
    # dropped at once, although its RST cannot go out yet
    assert wait_until(lambda: _HELD not in s.session._streams, 5), "the expiry waits for the send lock"
    assert s.mux._held is not None and s.mux._held.count() == 0
    assert not s.outcome and not s.session.closed
    # the plugin reads again: every frame arrives whole, the stuck writer's first, then the ACK and
    # the RST of the held stream
    s.plugin.settimeout(10)
    got = bytearray()

    def exactly(n: int) -> bytes:
        while len(got) < n:
            chunk = s.plugin.recv(1 << 20)
            assert chunk, "the host closed the connection"
            got.extend(chunk)
        out = bytes(got[:n])
        del got[:n]
        return out

    data = 0
    seen: list[int] = []  # the held stream's frames' flags, in order
    while RST not in seen or data < _WRITTEN:
        _, kind, flags, sid, length = _HDR.unpack(exactly(_HDR.size))
        if kind == DATA:
            assert sid == s.stream.id
            exactly(length)
            data += length
        elif sid == _HELD:
            assert kind == WINDOW_UPDATE and length == 0
            seen.append(flags)
    assert seen == [ACK, RST] and data == _WRITTEN, (seen, data)
    s.writer.join(10)
    assert s.outcome == [None] and not s.session.closed
