"""A host that floods its plugin instance with knocks, never reading the replies, loses its session.

Each knock for a served broker id is answered (an ack) on the broker stream; a peer that
grants that stream no HTTP/2 window never takes the answers, and gRPC keeps every one
(in the plugin's send queue, then in its own buffers): one such session of a network
plugin grew by ~190 MiB in 20 s. An honest host knocks once per dial and then opens
the dial's stream, so past MAX_UNFOLLOWED_KNOCKS knocks in a row with no stream the
session is closed, with a log line naming the peer. The peer here: a raw HTTP/2 client
(tests/rawh2.py) on a real yamux session to the plugin side of network mode
(AcceptedSession, with a real gRPC server and broker, as serve() builds per session).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from plugbay._proto.plugin import grpc_broker_pb2 as pb
from plugbay.core.broker.brokertransport import BrokerTransport
from plugbay.core.broker.stream import plugin_broker
from plugbay.core.transport import muxsession
from plugbay.core.transport.muxhost import HostMux
from plugbay.core.transport.muxplugin import AcceptedSession
from tests.rawh2 import RawCall

SERVED = 7
KNOCK = pb.ConnInfo(service_id=SERVED, knock=pb.ConnInfo.Knock(knock=True)).SerializeToString()


@dataclass
class Instance:
    plugin: AcceptedSession  # the plugin's side of the session
    host: HostMux  # the peer's yamux side: its local_address connections ride new streams

    def broker_call(self) -> RawCall:
        raw = socket.socket(socket.AF_UNIX)
        raw.connect(self.host.local_address[1])
        return RawCall(raw, "/plugin.GRPCBroker/StartStream")


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[Instance]:
    front = socket.socket(socket.AF_UNIX)
    front.bind(str(tmp_path / "front.sock"))
    front.listen(1)
    served = socket.socket(socket.AF_UNIX)  # the brokered server a knock's stream reaches
    served.bind(str(tmp_path / "served.sock"))
    served.listen(64)
    plugin = AcceptedSession(("unix", str(tmp_path / "inst.sock")), "192.0.2.7")
    server = grpc.server(futures.ThreadPoolExecutor(4))
    broker = plugin_broker(server, BrokerTransport(multiplex=True, mux=plugin))
    server.add_insecure_port(f"unix:{tmp_path / 'inst.sock'}")
    server.start()
    plugin.expect(SERVED, ("unix", str(tmp_path / "served.sock")))
    accepted = threading.Thread(target=lambda: plugin.run(front.accept()[0]), daemon=True)
    accepted.start()
    host = HostMux("unix", str(tmp_path / "front.sock"))
    accepted.join(10)
    try:
        yield Instance(plugin, host)
    finally:
        host.close()
        plugin.close()
        broker.close()
        server.stop(None)
        front.close()
        served.close()


def _until(what: str, check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_a_peer_that_knocks_without_reading_loses_its_session(instance: Instance,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="plugbay.mux")
    call = instance.broker_call()
    sent = 0
    for _ in range(20 * muxsession.MAX_UNFOLLOWED_KNOCKS):
        if not call.send(KNOCK, timeout=5):
            break
        sent += 1
    _until("the session of the flooding peer was not closed", lambda: instance.plugin.ended)
    assert call.received == 0  # it never let a reply through: every one waited
    session = instance.plugin.session
    assert session is not None and "knocked" in session.close_reason
    lines = [r.getMessage() for r in caplog.records if "192.0.2.7" in r.getMessage()]
    assert len(lines) == 1 and "knocks in a row" in lines[0], lines


def test_knocks_each_followed_by_a_stream_keep_the_session(instance: Instance) -> None:
    call = instance.broker_call()
    session = instance.host.session
    assert session is not None
    for n in range(muxsession.MAX_UNFOLLOWED_KNOCKS + 50):  # what a dialer does: knock, then open its stream
        assert call.send(KNOCK), n
        time.sleep(0.001)  # the stream follows the knock (the dialer waits for the ack)
        instance.host.open_stream(on=session).reset()
    time.sleep(0.5)
    assert not instance.plugin.ended
    assert os.path.exists(instance.host.local_address[1])
