"""A reset passed on as a reset, never as a clean end: by a bridge (stream <-> local socket) and by a
splice (the gateway's stream <-> stream proxy). An aborted upload must not look complete."""

from __future__ import annotations

import socket
import threading

from plugbay.core.transport.bridges import bridge, splice
from plugbay.core.transport.workers import Workers
from plugbay.core.transport.yamux import Session, Stream


def _pair(name: str, on_stream: object) -> tuple[Session, Session]:
    """(client, server) sessions over a socketpair; the server hands the peer's streams to ``on_stream``."""
    a, b = socket.socketpair()
    client = Session(a, client=True, on_stream=lambda s: s.reset(), name=f"{name}-cli")
    server = Session(b, client=False, on_stream=on_stream, name=f"{name}-srv")  # type: ignore[arg-type]
    return client, server


def _read_to_end(stream: Stream) -> bytes:
    out = bytearray()
    while data := stream.read():
        out += data
        stream.consumed(len(data))
    return bytes(out)


def test_a_bridge_ends_both_ways_on_the_peers_reset_while_the_local_side_stays_open() -> None:
    local_app, conn = socket.socketpair()  # local_app: the local gRPC side, which never closes by itself
    workers = Workers("plugbay-test-copy")
    ended = threading.Event()
    client, server = _pair("t-rst", lambda stream: bridge(stream, conn, workers, ended.set))
    try:
        stream = client.open()
        stream.write(b"partial")
        local_app.settimeout(10)  # a hang guard
        assert local_app.recv(100) == b"partial"
        stream.reset()
        # the bridge stops reading the local side too: its loops, worker threads and socket are free
        # at once, not when the local program happens to close
        assert ended.wait(10), "the bridge still holds the local socket after the peer reset the stream"
        assert local_app.recv(100) == b""
    finally:
        local_app.close()
        client.close()
        server.close()
        workers.close()


def test_a_splice_passes_a_reset_on_as_a_reset_and_a_fin_as_a_fin() -> None:
    threads: set[threading.Thread] = set()
    lock = threading.Lock()
    far: list[Stream] = []
    arrived = threading.Semaphore(0)

    def on_far(stream: Stream) -> None:
        far.append(stream)
        arrived.release()

    proxy_out, far_side = _pair("t-far", on_far)

    def on_near(stream: Stream) -> None:
        splice(stream, proxy_out.open(), threads, lock)

    near, proxy_in = _pair("t-near", on_near)
    try:
        aborted = near.open()
        aborted.write(b"partial-upload")
        assert arrived.acquire(timeout=10)
        aborted.reset()
        assert _read_to_end(far[0]) == b"partial-upload"
        assert far[0]._reset and not far[0]._remote_fin, "the far side saw an aborted stream end cleanly"

        finished = near.open()
        finished.write(b"whole")
        finished.close_write()
        assert arrived.acquire(timeout=10)
        assert _read_to_end(far[1]) == b"whole"
        assert far[1]._remote_fin and not far[1]._reset
        far[1].close_write()
    finally:
        for session in (near, proxy_in, proxy_out, far_side):
            session.close()
        with lock:
            left = list(threads)
        for t in left:
            t.join(10)
