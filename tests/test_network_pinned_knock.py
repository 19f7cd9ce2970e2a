"""The knock a pinned call makes when it finds only a refusal from before it began (MuxEndpoint.check_dial):
one at a time, and an older dial's outcome never overwrites a newer one's. Real relay, real sockets on
127.0.0.1."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from plugbay.core.transport.relayconn import RelayConn
from plugbay.network.muxconn import MuxEndpoint
from plugbay.network.resolver import Endpoint


@pytest.fixture
def silent_address() -> Iterator[str]:
    """An address that answers nothing: a listener whose accept queue is full drops further SYNs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filling = []
    try:
        for _ in range(3):
            sock = socket.socket()
            filling.append(sock)
            sock.setblocking(False)
            try:
                sock.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
        yield f"127.0.0.1:{port}"
    finally:
        for sock in filling:
            sock.close()
        listener.close()


def test_a_knock_is_not_made_again_while_the_last_ones_dial_is_under_way(silent_address: str) -> None:
    """Calls begun one after another on a stub whose address answers nothing any more (after a refusal) each
    knocked: each knock is a relay connection with a dial pending for the relay's handshake timeout (10 s), so
    the relay held as many as calls began in that time (51 for 50 calls)."""
    context = ssl.create_default_context()
    mux = MuxEndpoint(Endpoint("tcp", silent_address), lambda: context, "localhost")
    try:
        relay = mux._relay
        assert relay is not None
        relay._setup.dial_refused_at = time.monotonic() - 1.0  # the refusal a dial met before the calls began
        before = relay.connections
        for _ in range(50):
            mux.check_dial(time.monotonic())  # what each call's look does (pinkey.Pin.gone)
            time.sleep(0.01)
        assert relay.connections - before <= 1, relay.connections
    finally:
        mux.close()


def test_an_older_dials_outcome_does_not_overwrite_a_newer_ones(silent_address: str) -> None:
    """A dial begun earlier whose refusal is known later (a host name's look-up, a refusal from afar) set the
    relay's refusal time back to before a call began: the call took the newer refusal for a stale one again."""
    context = ssl.create_default_context()
    mux = MuxEndpoint(Endpoint("tcp", silent_address), lambda: context, "localhost")
    try:
        relay = mux._relay
        assert relay is not None
        older = RelayConn(relay._setup)
        time.sleep(0.01)
        newer = RelayConn(relay._setup)
        newer.dialed(refused=True)
        older.dialed(refused=True)
        assert mux.redial_refused_at == newer.begun
        older.dialed(refused=False)  # nor does an older dial that connected clear a newer refusal
        assert mux.redial_refused_at == newer.begun
        later = RelayConn(relay._setup)
        later.dialed(refused=False)
        assert mux.redial_refused_at is None
    finally:
        mux.close()
