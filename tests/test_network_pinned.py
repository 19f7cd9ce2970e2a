"""Each dispense() of a brokering remote plugin pins a new stub to one endpoint; the client kept
every one of those stubs' channels until close, so a host that dispenses per request grew without
bound. A dropped stub's channel goes now; one still held is still closed with the client.
Real counter replicas over mTLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugbay import AsyncRemoteClient
from plugbay.errors import PlugbayError
from tests import netcerts
from tests.test_network_broker import PLUGIN_NAME, Adder, CounterReplica, counter_config, host_tls, remote

DISPENSES = 300


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[tuple[CounterReplica, netcerts.CertSet]]:
    certs = netcerts.write_set(tmp_path / "tls")
    rep = CounterReplica(tmp_path / "r", certs)
    yield rep, certs
    code, err = rep.stop()
    assert code == 0, err[-2000:]
    rep.tmp.rmdir()


def test_dropped_stubs_do_not_pile_up_in_the_client(replica: tuple[CounterReplica, netcerts.CertSet]) -> None:
    rep, certs = replica
    with remote([rep], host_tls(certs)) as client:
        kept = client.dispense(PLUGIN_NAME)
        for _ in range(DISPENSES):
            client.dispense(PLUGIN_NAME).get  # noqa: B018 (made and dropped, as a per-request stub is)
        gc.collect()
        assert len(client._pinned) < 10, len(client._pinned)
        kept.put("n", 2, Adder())
        assert kept.get("n") == 2
    with pytest.raises(PlugbayError):  # the stub still held was closed with its client
        kept.get("n")


def test_dropped_async_stubs_do_not_pile_up_in_the_client(replica: tuple[CounterReplica, netcerts.CertSet]) -> None:
    rep, certs = replica

    async def main() -> None:
        async with AsyncRemoteClient(counter_config([rep], host_tls(certs))) as client:
            kept = await client.dispense(PLUGIN_NAME)
            for _ in range(DISPENSES):
                await client.dispense(PLUGIN_NAME)
            gc.collect()
            assert len(client._more_channels) < 10, len(client._more_channels)
            hooks = client.remote_client.channel.on_close_current
            assert len(hooks) < 10, len(hooks)
            await kept.put("n", 3, Adder())
            assert await kept.get("n") == 3
        with pytest.raises(PlugbayError):
            await kept.get("n")

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 120))  # hang detection only
    finally:
        loop.close()
