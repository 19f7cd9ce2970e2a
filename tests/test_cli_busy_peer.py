"""A network peer that keeps gRPC's reading thread busy cannot hold a command past its --timeout.

The peer answers the call's stream with a HEADERS frame that never ends its header block, then CONTINUATION
frames without end. gRPC ends calls at their deadline on the thread that reads the connection, so the check
(a 5 s --timeout) came back after about 70 s, reflection's stream and the channel's close never.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from tests.cli_util import plugbay

_SETTINGS = bytes.fromhex("000000040000000000")  # an empty SETTINGS frame
_HEADERS = bytes.fromhex("000001010000000001") + b"\x82"  # stream 1, no END_HEADERS
_CONTINUATION = b"\x00\x40\x00\x09\x00\x00\x00\x00\x01" + bytes(0x4000)  # 16 KiB more of the same block


@pytest.fixture
def flooding_peer() -> Iterator[str]:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def flood(conn: socket.socket) -> None:
        with conn:
            try:
                conn.sendall(_SETTINGS)
                conn.recv(65536)  # the client's preface and its call
                conn.sendall(_HEADERS)
                while not stop.is_set():
                    conn.sendall(_CONTINUATION)
            except OSError:
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=flood, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield f"static:///127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()
        acceptor.join(5)


@pytest.mark.parametrize("command", [["health"], ["call", "grpc.health.v1.Health/Check", "{}"]])
def test_a_peer_that_never_ends_its_headers_is_given_up_at_the_timeout(flooding_peer: str,
                                                                      command: list[str]) -> None:
    try:
        result = plugbay(command[0], "--insecure", "--timeout", "3", flooding_peer, *command[1:], timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"plugbay {command[0]} was still running 60 s after its 3 s --timeout")
    assert result.returncode == 3, result.stdout + result.stderr
    said = result.stdout + result.stderr
    assert "within 3s" in said and "Traceback" not in said, said
