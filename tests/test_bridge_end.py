"""A bridged stream's end (the peer's FIN, or a reset) when nothing is queued for its local socket.

Each brokered callback over the multiplexed connection ends its bridged streams this way, on both
sides. The session reader shuts the local socket itself: a worker woken only to do that (the
bridge's down loop) cost a thread hand-off on each side per callback.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tests.yamux_util import read_exactly

from plugbay.core.transport import bridges
from plugbay.core.transport.bridges import bridge
from plugbay.core.transport.workers import Workers
from plugbay.core.transport.yamux import Session, Stream


class _CountingWorkers(Workers):
    """Real Workers that count the loops handed to them."""

    def __init__(self) -> None:
        super().__init__("plugbay-test-bridge-end")
        self.loops = 0

    def run(self, task: Callable[[], None]) -> None:
        self.loops += 1
        super().run(task)


def _recv_to_eof(sock: socket.socket) -> bytes:
    out = bytearray()
    while chunk := sock.recv(4096):
        out += chunk
    return bytes(out)


@contextmanager
def session_pair(on_stream: Callable[[Stream], None], name: str) -> Iterator[Session]:
    """A client session over a socket pair whose server routes each stream it accepts to ``on_stream``;
    both closed on the way out."""
    a, b = socket.socketpair()
    client = Session(a, client=True, on_stream=lambda s: s.reset(), name=f"{name}-client")
    server = Session(b, client=False, on_stream=on_stream, name=f"{name}-server")
    try:
        yield client
    finally:
        client.close()
        server.close()


@pytest.mark.parametrize("end", ["fin", "reset"])
def test_a_bridged_streams_end_wakes_no_down_loop(end: str) -> None:
    workers = _CountingWorkers()
    local, far = socket.socketpair()
    far.settimeout(10)
    ended = threading.Event()
    routed: list[Stream] = []

    def on_stream(stream: Stream) -> None:  # on the server's reader, as MuxSession._route
        routed.append(stream)
        bridge(stream, local, workers, ended.set)

    try:
        with session_pair(on_stream, "t-end") as client:
            stream = client.open()
            stream.write(b"request")
            got = bytearray()
            while len(got) < 7:
                got += far.recv(64)
            assert bytes(got) == b"request"
            far.sendall(b"response")
            assert read_exactly(stream, 8) == b"response"
            if end == "fin":
                stream.close_write()
                # the peer's FIN reaches the local side as EOF; its own bytes still go the other way
                assert _recv_to_eof(far) == b""
                far.sendall(b"last")
                far.shutdown(socket.SHUT_WR)
                assert read_exactly(stream, 5) == b"last"
            else:
                stream.reset()
                assert _recv_to_eof(far) == b""
            far.close()
            assert ended.wait(10), "the bridge never ended"
            assert routed and routed[0].done
            # the up loop only: the end needed no thread of its own
            assert workers.loops == 1
    finally:
        far.close()
        workers.close()


def test_a_local_fin_after_the_peers_wakes_a_down_loop_waiting_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # A down loop whose local socket refused the peer's last bytes (a TLS close_notify after
    # grpcio closed it) waits for a FIN each way before it ends. The local FIN, sent by the up
    # loop, must wake it: it slept out _QUIET_END instead, and a plugin's Shutdown waited for
    # that worker (1 s more before exit behind a go-plugin host's multiplexed, AutoMTLS Kill).
    monkeypatch.setattr(bridges, "_QUIET_END", 60.0)  # only a wake-up ends the wait within the test
    routed: list[Stream] = []
    got = threading.Event()

    def on_stream(stream: Stream) -> None:
        routed.append(stream)
        got.set()

    with session_pair(on_stream, "t-quiet") as client:
        peer = client.open()
        peer.write(b"x")
        assert got.wait(10), "the stream never reached the server"
        stream = routed[0]
        peer.close_write()
        with stream._cond:
            assert stream._cond.wait_for(lambda: stream._remote_fin, 10), "the peer's FIN never arrived"
        result: list[bool] = []
        waiter = threading.Thread(target=lambda: result.append(bridges._ended_both_ways(stream)), daemon=True)
        waiter.start()
        stream.close_write()  # the up loop's end: the local side sent its FIN
        waiter.join(20)
        assert not waiter.is_alive(), "the local FIN did not wake the wait for both FINs"
        assert result == [True]
