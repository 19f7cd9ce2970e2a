"""After a peer's GoAway, the host's new streams go to a new session; the live ones finish on the old.

hashicorp/yamux's Session.GoAway() (a server draining before it stops) keeps the
connection: the peer only takes no new stream on it. The host kept that session as
its only one, so every new stream (a gRPC reconnect of the main channel, a
brokered dial) failed with NoNewStreamsError until the peer finally closed the
connection; the main channel's reconnect was a connection closed at once (gRPC:
UNAVAILABLE). Now the next open dials a new session when the current one went away.
The peer is tests/go/yamux_drain (hashicorp/yamux itself).
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from plugbay.core.transport.muxhost import HostMux
from plugbay.core.transport.yamux import Stream
from tests.gobuild import go_program_or_skip

BLOCK = bytes(range(250)) * 4  # the 1000 bytes yamux_drain echoes before its GoAway


def _echoed(stream: Stream, data: bytes) -> bytes:
    stream.write(data)
    got = b""
    deadline = time.monotonic() + 10
    while len(got) < len(data) and time.monotonic() < deadline:
        got += bytes(stream.read(len(data) - len(got)))
    return got


def test_new_streams_after_a_goaway_ride_a_new_session_and_the_old_ones_finish(tmp_path: Path) -> None:
    binary = go_program_or_skip("yamux_drain")
    address = str(tmp_path / "drain.sock")
    peer = subprocess.Popen([str(binary), address], stdout=subprocess.PIPE, text=True)
    host = None
    try:
        assert peer.stdout is not None and peer.stdout.readline().strip() == "listening"
        host = HostMux("unix", address)
        first = host.session
        old = host.open_stream()
        assert _echoed(old, BLOCK) == BLOCK  # the peer sends its GoAway after this echo
        deadline = time.monotonic() + 10
        while first is not None and not first.went_away:
            assert time.monotonic() < deadline, "no GoAway came"
            time.sleep(0.01)
        new = host.open_stream()  # was: NoNewStreamsError, until the peer closed the connection
        assert host.session is not first and not first.closed
        assert _echoed(new, b"new work") == b"new work"
        assert _echoed(old, b"still here") == b"still here"  # the live stream finishes on the old session
        with socket.socket(socket.AF_UNIX) as main:  # what the main gRPC channel's reconnect does
            main.settimeout(10)
            main.connect(host.local_address[1])
            main.sendall(b"reconnect")
            assert main.recv(100) == b"reconnect"  # was: the connection closed at once (EOF)
        old.close_write()
    finally:
        if host is not None:
            host.close()
        peer.kill()
        peer.wait(10)
        if peer.stdout is not None:
            peer.stdout.close()
