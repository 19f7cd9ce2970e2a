"""The loopback EndpointSlice API stand-in (tests/slice_api.py) keeps its word: an event put after a watch
ended (its client hung up) is the next watch's. A watch's wait for an event took the next one put even when
its client had left during that wait, and wrote it to the dead connection: the next watch never saw it, and
a test that hung up a watch and then sent an event waited for one that was gone. Real sockets on 127.0.0.1.
"""

from __future__ import annotations

import json
import socket

import pytest

from tests.slice_api import SliceAPI, api  # noqa: F401  (api is a fixture)

pytestmark = pytest.mark.kubernetes
PATH = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?watch=true"


def _watch(api: SliceAPI) -> tuple[socket.socket, bytes]:
    """A watch whose answer's head was read (the server's watch is taking events), and what came after it."""
    port = int(api.url.rsplit(":", 1)[1])
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.sendall(f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        got = conn.recv(4096)
        assert got, head
        head += got
    assert head.startswith(b"HTTP/1.1 200"), head
    return conn, head.split(b"\r\n\r\n", 1)[1]


def _first_event(conn: socket.socket, data: bytes) -> dict[str, object]:
    while b"\n\r\n" not in data:  # one chunk: SIZE CRLF, the event's line, CRLF
        got = conn.recv(4096)
        assert got, data
        data += got
    return json.loads(data.split(b"\r\n", 1)[1].split(b"\n", 1)[0])  # type: ignore[no-any-return]


@pytest.mark.timeout(60)
def test_an_event_put_after_a_watch_hung_up_goes_to_the_next_watch(api: SliceAPI) -> None:
    for n in range(20):  # the first watch's wait for an event is under way when its client leaves
        first, _ = _watch(api)
        first.close()
        event = {"type": "ADDED", "object": {"metadata": {"name": f"kv-{n}"}}}
        api.events.put(event)
        second, data = _watch(api)
        try:
            assert _first_event(second, data) == event  # on the old stand-in: the first watch's, recv timed out
        finally:
            second.close()
