"""A plugbay host holds a brokered stream that arrives before its knock (plugbay.core.transport.held).

A plugbay plugin told so (PLUGBAY_MULTIPLEX_HOLDS_STREAMS) opens the stream
right after knocking; the host must route it by the knock that follows, reset
it when that knock fails, never hold more than a few, and never route a
stream whose dial gave up to the next knock. Real yamux sessions over a real
connection (HostMux + PluginFront), real gRPC servers.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from collections.abc import Iterator

import pytest

from plugbay._proto.plugin import grpc_broker_pb2 as pb
from plugbay.core.host.launch import launch_env
from plugbay.core.protocol.handshake import ENV_MUX_HOLDS_STREAMS, HandshakeConfig
from plugbay.core.transport.held import LIMIT
from plugbay.errors import BrokerTimeoutError
from tests.test_broker import check, register
from tests.test_broker_mux import SERVING, MuxPair, close_mux_pair, make_mux_pair


@pytest.fixture
def pair() -> Iterator[MuxPair]:
    p = make_mux_pair("unix")
    p.front.peer_holds = True
    yield p
    close_mux_pair(p)


def _wait(pred, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.02)):
        if pred():
            return True
        threading.Event().wait(0.02)
    return bool(pred())


def test_a_stream_before_its_knock_goes_to_the_knocked_target(pair: MuxPair) -> None:
    with tempfile.TemporaryDirectory(prefix="plugbay-held-", dir="/tmp") as d:
        path = os.path.join(d, "t.sock")
        target = socket.socket(socket.AF_UNIX)
        target.bind(path)
        target.listen(1)
        target.settimeout(5)
        try:
            stream = pair.front.open_stream()  # no knock yet: the host holds it
            stream.write(b"early bytes")
            assert _wait(lambda: pair.hostmux._held is not None and pair.hostmux._held.count() == 1)
            pair.hostmux.expect(77, ("unix", path))
            assert pair.hostmux.accept_knock(77) == ""
            conn, _ = target.accept()
            conn.settimeout(5)
            with conn:
                got = b""
                while len(got) < len(b"early bytes"):
                    got += conn.recv(100)
                assert got == b"early bytes"
                conn.sendall(b"answer")
                assert bytes(stream.read()) == b"answer"
        finally:
            target.close()


def test_a_failed_knock_resets_its_held_stream(pair: MuxPair) -> None:
    stream = pair.front.open_stream()
    assert _wait(lambda: pair.hostmux._held is not None and pair.hostmux._held.count() == 1)
    assert pair.hostmux.accept_knock(4242) == "no listener for id 4242"
    assert stream.read() == b""
    assert stream.done


def test_held_streams_are_bounded(pair: MuxPair) -> None:
    streams = [pair.front.open_stream() for _ in range(LIMIT + 1)]
    assert streams[-1].read() == b""  # one too many: refused at once
    assert all(not s.done for s in streams[:-1])


def test_a_dial_that_timed_out_leaves_nothing_for_the_next_knock(pair: MuxPair) -> None:
    # an eager dial of an id the host never serves: the knock times out, the dialer resets
    # its stream, and the next dial's stream is not confused with it
    with pytest.raises(BrokerTimeoutError, match="knock acknowledgement of broker id 31337"):
        pair.plugin.dial(31337, timeout=0.5)
    sid = pair.host.next_id()
    pair.host.accept_and_serve(sid, register("after"))
    assert check(pair.plugin.dial(sid, timeout=10), "after") == SERVING
    assert pair.counter.accepted == 1


def test_an_eager_dial_succeeds_on_the_first_bytes_of_its_stream_before_the_ack(pair: MuxPair) -> None:
    # the host routes a held stream only for a knock it took, and its server speaks first: those
    # bytes prove the knock, so the dial need not wait for the ack's trip over the broker stream
    acks: list[pb.ConnInfo] = []
    send = pair.host._send_quietly

    def hold_acks(msg: pb.ConnInfo) -> None:
        if msg.HasField("knock") and msg.knock.ack:
            acks.append(msg)  # delivered by the test below, after the dial returned
            return
        send(msg)

    pair.host._send_quietly = hold_acks  # type: ignore[method-assign]
    sid = pair.host.next_id()
    pair.host.accept_and_serve(sid, register("first-bytes"))
    channel = pair.plugin.dial(sid, timeout=10)
    assert check(channel, "first-bytes") == SERVING
    assert [a.service_id for a in acks] == [sid] and not acks[0].knock.error
    assert pair.plugin._late_acks == {sid}
    for ack in acks:
        send(ack)
    # the late ack is dropped, not left for a later dial of the same id to take as its own
    assert _wait(lambda: not pair.plugin._late_acks)
    assert pair.plugin._acks == {}
    pair.host._send_quietly = send  # type: ignore[method-assign]
    again = pair.plugin.dial(sid, timeout=10)
    assert check(again, "first-bytes") == SERVING
    assert _wait(lambda: not pair.plugin._late_acks and not pair.plugin._acks)


def test_launch_env_tells_plugins_only_when_multiplexing() -> None:
    hs = HandshakeConfig(1, "BASIC_PLUGIN", "hello")
    kw = dict(socket_dir=None, cert=None, min_port=10000, max_port=25000)
    assert launch_env(hs, [1], env={}, multiplex=True, holds_streams=True, **kw)[ENV_MUX_HOLDS_STREAMS] == "1"
    assert ENV_MUX_HOLDS_STREAMS not in launch_env(hs, [1], env={}, multiplex=False, holds_streams=True, **kw)
    # a caller's env cannot claim it for a host that does not hold streams
    assert ENV_MUX_HOLDS_STREAMS not in launch_env(hs, [1], env={ENV_MUX_HOLDS_STREAMS: "1"}, multiplex=True,
                                                   **kw)
