"""A port-forward stream's closing handshake is bounded, also when the API server stopped reading.

The relay's last act on a stream is the WebSocket Close frame. Its send blocked for good once the
server's buffers were full (the stream's socket blocks, and close() no longer shuts a stream its
relay let go): the relay thread, and its connection to the API server, were never freed.
"""

from __future__ import annotations

import socket
import threading

from plugbay.runners.kubernetes.portforward import _close_stream
from plugbay.runners.kubernetes.wsframes import FrameReader


def test_close_frame_to_a_server_that_reads_nothing_gives_up() -> None:
    ours, server = socket.socketpair()
    try:
        ours.setblocking(False)
        try:
            while True:  # fill our send buffer and the server's receive buffer
                ours.send(b"\0" * 65536)
        except BlockingIOError:
            pass
        ours.setblocking(True)  # as a stream's socket is past its upgrade
        closing = threading.Thread(target=_close_stream, args=(ours, FrameReader(), 0.5), daemon=True)
        closing.start()
        closing.join(10)
        assert not closing.is_alive(), "the Close frame's send waited on a server that reads nothing"
        assert ours.fileno() == -1  # closed all the same
    finally:
        ours.close()
        server.close()
