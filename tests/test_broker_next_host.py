"""The plugin's broker outlives a host's broker stream: a reattached host opens another.

A host that brokered and closed ends its StartStream; the next (reattached) host's first call
may name a broker id before its own StartStream arrives (that stream is opened lazily, on a
separate connection). The plugin's dial must wait for it, not fail with the earlier host's
loss; what the plugin announces meanwhile waits for the next stream. The host's side stays
fail-fast (tests/test_broker.py test_stream_lost_fails_pending_dial), and so does the
plugin's own close() (test_close_fails_pending_dial_and_later_calls).

Real parts: a grpc.Server with plugin_broker() on a unix socket, hosts as real channels with
host_broker(), one after the other, as reattached hosts are.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from plugbay._proto.grpc.health.v1 import health_pb2, health_pb2_grpc
from plugbay.core.broker.broker import GRPCBroker
from plugbay.core.broker.brokertransport import BrokerTransport
from plugbay.core.broker.stream import host_broker, plugin_broker
from plugbay.errors import BrokerTimeoutError

SERVING = health_pb2.HealthCheckResponse.SERVING


class _Serving(health_pb2_grpc.HealthServicer):
    def Check(self, request, context):  # noqa: N802
        return health_pb2.HealthCheckResponse(status=SERVING)


def _register(server: grpc.Server) -> None:
    health_pb2_grpc.add_HealthServicer_to_server(_Serving(), server)


def _check(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status


class _Plugin:
    """The plugin side: its gRPC server and broker; hosts come and go on it."""

    def __init__(self, sockdir: str) -> None:
        self.sockdir = sockdir
        self.executor = ThreadPoolExecutor(max_workers=6, thread_name_prefix="plugbay-test-srv")
        self.server = grpc.server(self.executor)
        self.broker = plugin_broker(self.server, BrokerTransport(socket_dir=sockdir))
        self.path = os.path.join(sockdir, "main.sock")
        assert self.server.add_insecure_port(f"unix:{self.path}")
        self.server.start()
        self.hosts: list[tuple[grpc.Channel, GRPCBroker]] = []

    def host(self) -> GRPCBroker:
        channel = grpc.insecure_channel(f"unix:{self.path}")
        broker = host_broker(channel, BrokerTransport(socket_dir=self.sockdir))
        self.hosts.append((channel, broker))
        return broker

    def host_leaves(self, host: GRPCBroker) -> None:
        """``host`` closes its broker and the plugin sees its stream end (a bounded wait)."""
        host.close()
        deadline = time.monotonic() + 10
        while self.broker.lost_reason is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.broker.lost_reason is not None, "the plugin never saw the host's broker stream end"

    def close(self) -> None:
        for channel, broker in self.hosts:
            broker.close()
            channel.close()
        self.broker.close()
        self.server.stop(grace=None).wait(10)
        self.executor.shutdown(wait=True)


@pytest.fixture
def plugin() -> Iterator[_Plugin]:
    sockdir = tempfile.mkdtemp(prefix="bn", dir="/tmp")  # short: unix socket paths stay under 108 bytes
    p = _Plugin(sockdir)
    try:
        yield p
    finally:
        p.close()
        leftovers = os.listdir(sockdir)
        os.rmdir(sockdir) if not leftovers else None
    assert leftovers == [], f"broker left sockets behind: {leftovers}"
    assert not any(t.name == "plugbay-broker-recv" for t in threading.enumerate())


def _broker_once(plugin: _Plugin, host: GRPCBroker) -> None:
    sid = host.next_id()
    host.accept_and_serve(sid, _register)
    assert _check(plugin.broker.dial(sid)) == SERVING


def test_a_dial_after_a_host_left_waits_for_the_next_host(plugin: _Plugin) -> None:
    first = plugin.host()
    _broker_once(plugin, first)
    plugin.host_leaves(first)

    # no host yet: the dial waits out its own timeout, saying the stream ended (was: failed at
    # once with the earlier host's loss, as if this plugin could never broker again)
    with pytest.raises(BrokerTimeoutError, match="stream ended"):
        plugin.broker.dial(1, timeout=0.2)

    # the next host's call names its id before its stream is up; the stream comes, then the id
    result: list[object] = []

    def dialer() -> None:
        try:
            result.append(_check(plugin.broker.dial(1, timeout=30)))
        except Exception as exc:  # reported below
            result.append(exc)

    t = threading.Thread(target=dialer, name="plugbay-test-dialer")
    t.start()
    second = plugin.host()
    second.accept_and_serve(1, _register)
    t.join(20)
    assert result == [SERVING]


def test_what_the_plugin_announces_between_hosts_reaches_the_next_host(plugin: _Plugin) -> None:
    first = plugin.host()
    _broker_once(plugin, first)
    plugin.host_leaves(first)

    sid = plugin.broker.next_id()
    plugin.broker.accept_and_serve(sid, _register)  # was: BrokerClosedError, the earlier host's loss
    second = plugin.host()
    assert _check(second.dial(sid)) == SERVING
