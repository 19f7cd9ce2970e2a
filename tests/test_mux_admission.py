"""Who gets a multiplexed plugin (PLUGIN_MULTIPLEX_GRPC): a connection that speaks yamux, and a live host keeps it.

The plugin is the real trap KV plugin started by a real Client with
multiplex_broker=True; the test opens raw connections to the announced
address before the host's own connection (HoldFirst runs between the plugin
printing its handshake and the host reading it) or while the host is connected.
"""

from __future__ import annotations

import select
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "kv"))

from kv_plugin_def import HANDSHAKE, PLUGIN_NAME, KVPlugin  # noqa: E402

from plugbay import Client, ClientConfig  # noqa: E402
from plugbay.core.protocol.handshake import HandshakeInfo, parse_handshake_line  # noqa: E402
from plugbay.core.transport.admit import FIRST_FRAME_WAIT  # noqa: E402
from plugbay.core.transport.yamux import Session  # noqa: E402
from plugbay.runners.process import ProcessRunner  # noqa: E402

TRAP = str(REPO / "tests" / "plugins" / "trap_kv.py")
SYN_STREAM_1 = struct.pack(">BBHII", 0, 1, 1, 1, 0)  # WindowUpdate, SYN, stream 1: a client opening
WAIT = 30.0  # generous overall bound for "closed eventually"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the KV plugin writes kv_<key> files in its cwd


class HoldFirst(ProcessRunner):
    """A real ProcessRunner that calls ``before_host(info)`` on the handshake line before the host reads it."""

    def __init__(self, before_host: Callable[[HandshakeInfo], None]) -> None:
        super().__init__([sys.executable, TRAP])
        self.before_host = before_host

    def stdout_lines(self) -> Iterator[str]:
        lines = super().stdout_lines()
        for line in lines:
            self.before_host(parse_handshake_line(line))
            yield line
            break
        yield from lines


def host(runner: ProcessRunner, auto_mtls: bool) -> Client:
    return Client(ClientConfig(handshake=HANDSHAKE, plugins={PLUGIN_NAME: KVPlugin()}, runner=runner,
                               multiplex_broker=True, auto_mtls=auto_mtls, start_timeout=20.0,
                               call_timeout=20.0))


def raw(info: HandshakeInfo, send: bytes = b"") -> socket.socket:
    family = socket.AF_UNIX if info.network == "unix" else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(10)
    target = info.address if info.network == "unix" else info.address.rsplit(":", 1)
    sock.connect(target if isinstance(target, str) else (target[0], int(target[1])))
    if send:
        sock.sendall(send)
    return sock


def closed_eventually(socks: list[socket.socket], within: float = WAIT) -> list[int]:
    """Indexes of the sockets the plugin has NOT closed within ``within`` seconds (read to EOF)."""
    open_ = set(range(len(socks)))
    deadline = time.monotonic() + within
    while open_ and time.monotonic() < deadline:
        ready, _, _ = select.select([socks[i] for i in open_], [], [], 0.2)
        for sock in ready:
            try:
                if not sock.recv(65536):
                    open_.discard(socks.index(sock))
            except OSError:
                open_.discard(socks.index(sock))
    return sorted(open_)


def use(client: Client, key: str) -> None:
    kv = client.dispense(PLUGIN_NAME)
    kv.put(key, b"through the mux")
    assert kv.get(key) == b"through the mux"


AUTO_MTLS = pytest.mark.parametrize("auto_mtls", [False, True], ids=["plaintext", "automtls"])


@AUTO_MTLS
def test_idle_and_garbage_connections_do_not_take_the_plugin(auto_mtls: bool) -> None:
    held: list[socket.socket] = []

    def hold(info: HandshakeInfo) -> None:
        held.extend(raw(info) for _ in range(3))  # connect and say nothing
        held.append(raw(info, b"\x00" * 12 + b"GET / HTTP/1.1\r\n\r\n"))  # version-0 bytes, no SYN
        held.append(raw(info, b"\x16\x03\x01\x00\xa5garbage!"))  # TLS at the connection level

    try:
        with host(HoldFirst(hold), auto_mtls) as client:
            use(client, "after-idle")
            assert len(held) == 5
            assert closed_eventually(held) == []
            use(client, "still-mine")
    finally:
        for sock in held:
            sock.close()
    assert FIRST_FRAME_WAIT < WAIT


@AUTO_MTLS
def test_a_stale_session_is_replaced_by_the_next_host(auto_mtls: bool) -> None:
    held: list[socket.socket] = []

    def hold(info: HandshakeInfo) -> None:
        # opens a stream like a yamux client, then never reads, writes or answers a ping
        held.append(raw(info, SYN_STREAM_1))
        time.sleep(0.5)  # admitted: it holds the plugin's session now

    try:
        with host(HoldFirst(hold), auto_mtls) as client:
            use(client, "replaced")
            assert closed_eventually(held) == []
    finally:
        for sock in held:
            sock.close()


def test_a_live_host_keeps_the_plugin() -> None:
    with host(ProcessRunner([sys.executable, TRAP]), False) as client:
        use(client, "first")
        intruder = raw(client.handshake, SYN_STREAM_1)
        try:
            # a yamux-speaking second connection is refused while the host answers pings
            assert closed_eventually([intruder]) == []
        finally:
            intruder.close()
        use(client, "still-mine")


def test_a_live_host_with_no_stream_keeps_the_plugin() -> None:
    # the plugin's gRPC server closes the host's idle connection: the session then carries no
    # stream, and a local yamux client that opens a stream (and answers pings) must not take it
    runner = ProcessRunner([sys.executable, TRAP], env={"TRAP_IDLE_MS": "300"})
    with host(runner, False) as client:
        use(client, "first")
        session = client._mux.session if client._mux is not None else None
        assert session is not None
        deadline = time.monotonic() + WAIT
        while session.open_streams and time.monotonic() < deadline:
            time.sleep(0.05)
        assert session.open_streams == 0
        sock = raw(client.handshake)
        sock.settimeout(None)
        intruder = Session(sock, client=True, on_stream=lambda stream: stream.reset(), name="intruder")
        try:
            intruder.open()
            deadline = time.monotonic() + WAIT
            while not intruder.closed and time.monotonic() < deadline:
                time.sleep(0.05)
            assert intruder.closed, "a local yamux speaker took the plugin from its idle host"
            assert not session.closed
        finally:
            intruder.close()
        use(client, "still-mine")
        assert client._mux.session is session
