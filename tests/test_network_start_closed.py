"""What a RemoteClient's (and an AsyncRemoteClient's) start() cut short by close() from another thread says:
the class the user made, where the connecting was, and whether the remote plugin had been found at all."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from plugbay import AsyncRemoteClient, ClientStateError, PlugbayError, RemoteClient, RemoteConfig
from plugbay._proto.plugbay import discovery_pb2, discovery_pb2_grpc
from tests.net_util import HANDSHAKE, PLUGINS, serving_discovery
from tests.test_network_remote import start_ended_by

CONNECTING = "was closed (close() or kill()) while it was still connecting (discovering the target's endpoints" \
    " and asking the plugin's Discovery)"
NOT_FOUND = "no endpoint of the plugin had been found or had answered yet"


class _SlowDiscovery(discovery_pb2_grpc.DiscoveryServicer):
    """A plugin that answers health checks but holds Discovery: start() waits in Describe meanwhile."""

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.release = threading.Event()

    def Describe(self, request: discovery_pb2.DescribeRequest, context: grpc.ServicerContext) -> object:
        self.asked.set()
        self.release.wait(30)
        context.abort(grpc.StatusCode.UNAVAILABLE, "released")


@pytest.fixture()
def slow_plugin() -> Iterator[tuple[str, _SlowDiscovery]]:
    discovery = _SlowDiscovery()
    with serving_discovery(discovery) as address:
        try:
            yield address, discovery
        finally:
            discovery.release.set()  # a Describe still held ends, so the server's stop does not wait for it


def _config(address: str) -> RemoteConfig:
    return RemoteConfig(target=f"static:///{address}", handshake=HANDSHAKE, plugins=PLUGINS, insecure=True,
                        start_timeout=15.0, health_interval=0.2, name="kv-closed")


def _start_closed(client: RemoteClient, ready: Callable[[], object]) -> str:
    """What client.start(), on another thread, raised once close() came when ``ready()`` turned True."""
    outcome, _ = start_ended_by(client, "close", ready)
    assert isinstance(outcome, ClientStateError), outcome
    return str(outcome)


def test_close_during_start_with_no_endpoint_found_says_so(closed_port: int) -> None:
    client = RemoteClient(_config(f"127.0.0.1:{closed_port}"))  # nothing listens there
    said = _start_closed(client, lambda: client._pool is not None and time.sleep(0.5) is None)
    assert CONNECTING in said and NOT_FOUND in said and "Make a new RemoteClient" in said, said
    assert "left running" not in said, said  # no plugin was found: nothing was left running
    with pytest.raises(ClientStateError) as refused:
        client.dispense("kv")
    # closed or killed, and the class to make anew (it once said "was killed; make a new Client")
    assert "remote plugin 'kv-closed' was closed (close() or kill()); make a new RemoteClient" in \
        str(refused.value), refused.value


def test_close_during_start_with_a_plugin_found_says_it_was_left_running(
        slow_plugin: tuple[str, _SlowDiscovery]) -> None:
    address, discovery = slow_plugin
    client = RemoteClient(_config(address))
    said = _start_closed(client, lambda: discovery.asked.is_set() and client.pool.metrics()["healthy"] > 0)
    assert CONNECTING in said and "the remote plugin was left running" in said, said
    assert NOT_FOUND not in said, said


def test_an_async_client_closed_during_start_names_its_own_class(closed_port: int) -> None:
    async def main() -> tuple[BaseException | None, BaseException | None]:
        client = AsyncRemoteClient(_config(f"127.0.0.1:{closed_port}"))
        start = asyncio.ensure_future(client.start())
        for _ in range(100):
            if client.remote_client._pool is not None:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # well into the wait for an endpoint
        await client.close()
        ended = (await asyncio.gather(start, return_exceptions=True))[0]
        refused = (await asyncio.gather(client.dispense("kv"), return_exceptions=True))[0]
        return ended, refused

    loop = asyncio.new_event_loop()
    try:
        ended, refused = loop.run_until_complete(asyncio.wait_for(main(), 60))  # hang detection only
    finally:
        loop.close()
    assert isinstance(ended, ClientStateError), ended
    said = str(ended)
    # it once said "Make a new RemoteClient (or connect())": a class the asyncio user does not have
    assert CONNECTING in said and NOT_FOUND in said and "Make a new AsyncRemoteClient" in said, said
    assert "RemoteClient (" not in said and "connect()" not in said, said
    assert isinstance(refused, ClientStateError), refused
    # its start failed (the close): dispense() says so, naming the class (it once said "make a new AsyncClient")
    assert str(refused).endswith("; make a new AsyncRemoteClient") and "AsyncClient" not in str(refused), refused


def test_a_failed_start_names_the_class_to_make_anew(closed_port: int) -> None:
    """After a failed start(), the refusal to start again names RemoteClient (it once said "make a new
    Client", which a RemoteClient user does not make)."""
    config = RemoteConfig(target=f"static:///127.0.0.1:{closed_port}", handshake=HANDSHAKE, plugins=PLUGINS,
                          insecure=True, start_timeout=1.0, health_interval=0.2, name="kv-failed")
    client = RemoteClient(config)
    try:
        with pytest.raises(PlugbayError):  # nothing listens there: the start fails at start_timeout
            client.start()
        with pytest.raises(ClientStateError, match=r"a RemoteClient starts once: make a new RemoteClient$"):
            client.dispense("kv")
    finally:
        client.close()
