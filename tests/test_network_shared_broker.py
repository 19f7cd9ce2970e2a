"""A network plugin's shared server never dials an address a peer announced on GRPCBroker.StartStream.

The counter example served with PLUGBAY_NETWORK_* (the brokering front, and plain gRPC only:
MULTIPLEX=0). Its plain gRPC server had a per-connection broker: a peer with a valid client
certificate announced a broker id at any address (a host only the plugin's machine reaches, a local
unix socket) and called Counter.Put(add_server=id): the plugin dialed it. Brokering hosts broker in
their own multiplexed sessions (tests/test_network_broker.py); on the shared server there is none.
"""

from __future__ import annotations

import queue
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from plugbay._proto.plugin import grpc_broker_pb2, grpc_broker_pb2_grpc
from tests import netcerts
from tests.test_network_broker import CounterReplica, counter_pb2, counter_pb2_grpc

BOUND = 10.0


@pytest.fixture
def certs(tmp_path: Path) -> netcerts.CertSet:
    return netcerts.write_set(tmp_path / "tls")


@pytest.fixture(params=["front", "multiplex-0"])
def replica(request: pytest.FixtureRequest, tmp_path: Path, certs: netcerts.CertSet) -> Iterator[CounterReplica]:
    extra = {"PLUGBAY_NETWORK_MULTIPLEX": "0"} if request.param == "multiplex-0" else {}
    rep = CounterReplica(tmp_path / "plugin", certs, extra)
    yield rep
    code, err = rep.stop()
    assert code == 0, err[-2000:]
    assert not list(rep.tmp.iterdir()), "the plugin left sockets or folders behind"
    rep.tmp.rmdir()


def _listeners(folder: Path) -> list[tuple[str, str, socket.socket]]:
    """A tcp and a unix listener this test owns: what a peer would name for the plugin to dial."""
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    path = str(folder / "peer.sock")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(path)
    unix.listen(8)
    return [("tcp", f"127.0.0.1:{tcp.getsockname()[1]}", tcp), ("unix", path, unix)]


def _dialed(listener: socket.socket) -> bool:
    listener.setblocking(False)
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def test_a_peer_named_broker_address_is_never_dialed(replica: CounterReplica, certs: netcerts.CertSet,
                                                      tmp_path: Path) -> None:
    listeners = _listeners(tmp_path)
    try:
        with grpc.secure_channel(replica.address, netcerts.channel_credentials(certs),
                                 options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
            for number, (network, address, listener) in enumerate(listeners, start=7):
                announced: queue.Queue[grpc_broker_pb2.ConnInfo | None] = queue.Queue()
                announced.put(grpc_broker_pb2.ConnInfo(service_id=number, network=network, address=address))

                def messages(announced: queue.Queue[grpc_broker_pb2.ConnInfo | None] = announced
                             ) -> Iterator[grpc_broker_pb2.ConnInfo]:
                    while (message := announced.get()) is not None:
                        yield message

                stream = grpc_broker_pb2_grpc.GRPCBrokerStub(channel).StartStream(  # type: ignore[no-untyped-call]
                    messages(), timeout=BOUND)
                try:
                    with pytest.raises(grpc.RpcError) as put:
                        counter_pb2_grpc.CounterStub(channel).Put(
                            counter_pb2.PutRequest(add_server=number, key="k", value=1), timeout=BOUND)
                    assert not _dialed(listener), f"the plugin dialed the {network} address the peer named"
                    assert put.value.code() != grpc.StatusCode.DEADLINE_EXCEEDED  # refused, not waited for
                    assert "has no broker" in str(put.value.details())
                    with pytest.raises(grpc.RpcError) as refused:
                        next(stream)
                    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                    assert "multiplexed session" in str(refused.value.details())
                finally:
                    announced.put(None)
                    stream.cancel()
    finally:
        for _, _, sock in listeners:
            sock.close()
