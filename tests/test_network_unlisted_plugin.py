"""A network plugin's Discovery lists the plugins it serves: dispense() of a name it does not list (the host's
set has it) is an UnknownPluginError naming what the plugin serves, sync and asyncio alike, not a stub whose
first call fails with grpc's raw UNIMPLEMENTED. A gateway's list is its --plugins flag, not its child's word:
a name it does not list is dispensed, with a warning.

The plugin is a real net_kv process (Discovery lists only kv_grpc); the host's set also has the counter
example's plugin. The gateway's answer is given by a real gRPC server with plugbay's DiscoveryServicer.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugbay import AsyncRemoteClient, RemoteClient, RemoteConfig, UnknownPluginError
from plugbay.core.plugin.network import DiscoveryServicer
from tests.net_util import HANDSHAKE, PLUGIN_NAME, PLUGINS, Replica, serving_discovery

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "counter"))
from counter_plugin_def import PLUGIN_NAME as COUNTER, CounterPlugin  # noqa: E402

BOTH = {**PLUGINS, COUNTER: CounterPlugin()}


@pytest.fixture()
def replica() -> Iterator[Replica]:
    rep = Replica("127.0.0.1:0")
    try:
        yield rep
    finally:
        rep.stop()


def _config(address: str) -> RemoteConfig:
    return RemoteConfig(target=f"static:///{address}", handshake=HANDSHAKE, plugins=BOTH, insecure=True,
                        start_timeout=15.0, name="kv-unlisted")


def _says_what_is_served(error: UnknownPluginError, address: str) -> None:
    said = str(error)
    assert error.name == COUNTER and error.available == [PLUGIN_NAME], said
    assert f"remote plugin 'kv-unlisted' at 'static:///{address}' (app protocol version 1) serves only" \
           f" ['{PLUGIN_NAME}']" in said, said


@pytest.mark.timeout(60)
def test_a_name_the_remote_does_not_list_is_refused_at_dispense(replica: Replica) -> None:
    with RemoteClient(_config(replica.address)) as client:
        with pytest.raises(UnknownPluginError) as caught:
            client.dispense(COUNTER)
        _says_what_is_served(caught.value, replica.address)
        kv = client.dispense(PLUGIN_NAME)  # the listed one still works
        kv.put("k", b"v")
        assert kv.get("k") == b"v"


@pytest.mark.timeout(60)
def test_an_asyncio_client_refuses_it_too(replica: Replica) -> None:
    async def main() -> None:
        async with AsyncRemoteClient(_config(replica.address)) as client:
            with pytest.raises(UnknownPluginError) as caught:
                await client.dispense(COUNTER)
            _says_what_is_served(caught.value, replica.address)
            kv = await client.dispense(PLUGIN_NAME)
            await kv.put("k", b"v")
            assert await kv.get("k") == b"v"

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_a_gateways_unlisted_name_is_dispensed_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    gateway = DiscoveryServicer([(1, [PLUGIN_NAME])], server="plugbay-gateway/0 (go-plugin plugin ./kv)")
    with serving_discovery(gateway) as address, RemoteClient(_config(address)) as client:
        assert client.dispense(COUNTER) is not None
        client.dispense(COUNTER)
        warned = [r for r in caplog.records if "not 'counter' (its --plugins flag)" in r.getMessage()]
        assert len(warned) == 1, caplog.text  # once per name
        assert "add 'counter' to the gateway's --plugins" in warned[0].getMessage()


@pytest.mark.timeout(60)
def test_a_remote_listing_no_names_allows_any(caplog: pytest.LogCaptureFixture) -> None:
    unknown = DiscoveryServicer([(1, [])])  # an empty list: the names are not known
    with serving_discovery(unknown) as address, RemoteClient(_config(address)) as client:
        assert client.dispense(COUNTER) is not None
