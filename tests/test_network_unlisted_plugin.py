"""A network plugin's Discovery lists its own plugin-set keys; the name a host dispenses is a key in the host's
set only, and calls route by gRPC service name (as go-plugin's GRPCClient.Dispense checks only the host's map).
So a name Discovery does not list is dispensed, never refused: a host that names the plugin differently works,
sync and asyncio alike, and the unlisted name is warned of once (a first call failing UNIMPLEMENTED then means
the plugin serves no such service). A gateway's list, its --plugins flag, is treated the same way.

The plugin is a real net_kv process (Discovery lists only kv_grpc). The gateway's answer is given by a real
gRPC server with plugbay's DiscoveryServicer.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc
import pytest

from plugbay import AsyncRemoteClient, RemoteClient, RemoteConfig
from plugbay.core.plugin.network import DiscoveryServicer
from tests.net_util import HANDSHAKE, PLUGIN_NAME, PLUGINS, Replica, serving_discovery
from tests.net_util import loopback_replica  # noqa: F401  (the fixture)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "counter"))
from counter_plugin_def import PLUGIN_NAME as COUNTER, CounterPlugin  # noqa: E402

RENAMED = {"mykv": PLUGINS[PLUGIN_NAME]}  # the host's own name for the kv plugin
BOTH = {**PLUGINS, COUNTER: CounterPlugin()}


def _config(address: str, plugins: dict) -> RemoteConfig:
    return RemoteConfig(target=f"static:///{address}", handshake=HANDSHAKE, plugins=plugins, insecure=True,
                        start_timeout=15.0, name="kv-unlisted")


def _warnings_of(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"lists only ['{PLUGIN_NAME}'] for app protocol version 1,"
            f" not {name!r}" in r.getMessage()]


@pytest.mark.timeout(60)
def test_a_host_naming_the_plugin_differently_dispenses_and_calls_it(loopback_replica: Replica) -> None:
    with RemoteClient(_config(loopback_replica.address, RENAMED)) as client:
        kv = client.dispense("mykv")
        kv.put("k", b"v")
        assert kv.get("k") == b"v"


@pytest.mark.timeout(60)
def test_an_asyncio_host_naming_it_differently_calls_it_too(loopback_replica: Replica) -> None:
    async def main() -> None:
        async with AsyncRemoteClient(_config(loopback_replica.address, RENAMED)) as client:
            kv = await client.dispense("mykv")
            await kv.put("k", b"v")
            assert await kv.get("k") == b"v"

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_an_unlisted_name_is_warned_of_once_and_a_service_not_served_fails_unimplemented(
        loopback_replica: Replica, caplog: pytest.LogCaptureFixture) -> None:
    with RemoteClient(_config(loopback_replica.address, BOTH)) as client:
        counter = client.dispense(COUNTER)
        client.dispense(COUNTER)
        warned = _warnings_of(caplog, COUNTER)
        assert len(warned) == 1, caplog.text  # once per name
        assert f"remote plugin 'kv-unlisted' at 'static:///{loopback_replica.address}'" in warned[0], warned[0]
        assert "a first call failing UNIMPLEMENTED means the plugin serves no such service" in warned[0]
        with pytest.raises(grpc.RpcError) as caught:
            counter.get("k")
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        client.dispense(PLUGIN_NAME).put("k", b"v")  # a listed name: no warning
        assert not _warnings_of(caplog, PLUGIN_NAME), caplog.text


@pytest.mark.timeout(60)
def test_a_gateways_unlisted_name_is_dispensed_with_the_same_warning(caplog: pytest.LogCaptureFixture) -> None:
    gateway = DiscoveryServicer([(1, [PLUGIN_NAME])], server="plugbay-gateway/0 (go-plugin plugin ./kv)")
    with serving_discovery(gateway) as address, RemoteClient(_config(address, BOTH)) as client:
        assert client.dispense(COUNTER) is not None
        client.dispense(COUNTER)
        assert len(_warnings_of(caplog, COUNTER)) == 1, caplog.text


@pytest.mark.timeout(60)
def test_a_remote_listing_no_names_allows_any(caplog: pytest.LogCaptureFixture) -> None:
    unknown = DiscoveryServicer([(1, [])])  # an empty list: the names are not known
    with serving_discovery(unknown) as address, RemoteClient(_config(address, BOTH)) as client:
        assert client.dispense(COUNTER) is not None
        assert not _warnings_of(caplog, COUNTER), caplog.text
