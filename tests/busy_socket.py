"""A unix listener that does not accept, its backlog filled by connections of ours: a busy server,
whose connect answers EAGAIN, not a gone one (whose connect is refused)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def busy_listener(path: str) -> Iterator[tuple[socket.socket, list[socket.socket]]]:
    """(the listener on ``path``, the connections that fill its backlog); all closed at the end."""
    listener = socket.socket(socket.AF_UNIX)
    fillers: list[socket.socket] = []
    try:
        listener.bind(path)
        listener.listen(0)
        listener.settimeout(10)
        for _ in range(64):  # fill the accept queue: the next connect gets EAGAIN
            filler = socket.socket(socket.AF_UNIX)
            filler.setblocking(False)
            fillers.append(filler)
            try:
                filler.connect(path)
            except BlockingIOError:
                break
        else:
            pytest.fail("the listener's backlog never filled")
        yield listener, fillers
    finally:
        for sock in (listener, *fillers):
            sock.close()
