"""A network target where nothing listens: every connection is refused, which is an answer, not a wait.

The start gives up on refusals after describe.REFUSED_FOR (a server that is starting refuses until it
listens), with RemoteRefusedError saying so, however long start_timeout is; it once waited out start_timeout
and ended as a HandshakeTimeoutError advising a longer one. A server that listens a few seconds late is
still found. The start_timeout here (120 s) is far above what the suite lets a test take (pytest-timeout,
60 s below), so a start that waited it out fails the test by its timeout, not by a timed assertion.
"""

from __future__ import annotations

import socket
import threading

import pytest

from plugbay import HandshakeTimeoutError, RemoteClient, RemoteConfig, RemoteRefusedError, TargetUnreachableError
from plugbay.network import connect
from tests.net_util import HANDSHAKE, PLUGIN_NAME, PLUGINS, Replica

LONG_START = 120.0


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _said_refused(error: BaseException, port: int) -> None:
    said = str(error)
    assert not isinstance(error, HandshakeTimeoutError), said
    assert isinstance(error, TargetUnreachableError), said  # the command line's UNREACHABLE too
    assert f"at 'static:///127.0.0.1:{port}' refused the connection" in said, said
    assert "nothing listens there" in said and "Connection refused" in said, said
    assert "raise start_timeout" not in said, said


@pytest.mark.timeout(60)
def test_connect_to_nothing_listening_fails_as_refused_not_at_start_timeout() -> None:
    port = _unused_port()
    with pytest.raises(RemoteRefusedError) as err:
        connect(f"static:///127.0.0.1:{port}", handshake=HANDSHAKE, plugins=PLUGINS, insecure=True,
                start_timeout=LONG_START, name="kv-refused")
    _said_refused(err.value, port)


@pytest.mark.timeout(60)
def test_a_remote_clients_start_against_nothing_listening_fails_as_refused() -> None:
    port = _unused_port()
    client = RemoteClient(RemoteConfig(target=f"static:///127.0.0.1:{port}", handshake=HANDSHAKE, plugins=PLUGINS,
                                       insecure=True, start_timeout=LONG_START, name="kv-refused"))
    try:
        with pytest.raises(RemoteRefusedError) as err:
            client.start()
    finally:
        client.kill()
    _said_refused(err.value, port)


@pytest.mark.timeout(90)
def test_a_server_that_listens_five_seconds_late_is_still_found() -> None:
    port = _unused_port()
    started: list[Replica] = []
    timer = threading.Timer(5.0, lambda: started.append(Replica(f"127.0.0.1:{port}")))
    timer.start()
    try:
        with connect(f"static:///127.0.0.1:{port}", handshake=HANDSHAKE, plugins=PLUGINS, insecure=True,
                     start_timeout=LONG_START, name="kv-late") as client:
            kv = client.dispense(PLUGIN_NAME)
            kv.put("k", b"v")
            assert kv.get("k") == b"v"
    finally:
        timer.cancel()
        timer.join(30)
        for replica in started:
            replica.stop()
