"""A set of endpoints the pool failed to take (a new endpoint's channel could not be built right then)
is handed over again by discovery, and the pool keeps its previous set whole meanwhile. Real DNS
(tests/dns_util.py) and a loopback stand-in of the Kubernetes API (tests/slice_api.py)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from dnslib import SRV

from tests.dns_util import ZONE, Zone, serving
from tests.resilience_util import wait_until
from tests.slice_api import SliceAPI, api, slice_of  # noqa: F401  (api is a fixture)

from plugbay.network.kubernetes import EndpointSliceResolver
from plugbay.network.pool import EndpointPool
from plugbay.network.resolver import Endpoint
from plugbay.network.resolvers import DNSResolver


class FlakyConnector:
    """Builds plaintext channels; refuses the first build for ``address`` (as an EMFILE would)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.refusals = 1
        self.built: list[grpc.Channel] = []
        self.lock = threading.Lock()

    def __call__(self, endpoint: Endpoint) -> grpc.Channel:
        with self.lock:
            if endpoint.address == self.address and self.refusals:
                self.refusals -= 1
                raise OSError(24, "Too many open files")
        channel = grpc.insecure_channel(endpoint.address)
        self.built.append(channel)
        return channel


def _closed(channel: grpc.Channel) -> bool:
    try:
        channel.unary_unary("/x.Y/Z")(b"", timeout=0.5)
    except ValueError:  # grpc's word for a call on a closed channel
        return True
    except grpc.RpcError:
        return False
    return False


def test_a_dns_answer_the_pool_failed_to_take_is_taken_at_a_later_lookup() -> None:
    zone = Zone()
    name = f"_kv._tcp.{ZONE}"
    connector = FlakyConnector("127.0.0.1:2")
    with serving(zone) as server:
        zone.set(name, "SRV", [SRV(0, 0, 1, "127.0.0.1")])
        pool = EndpointPool(DNSResolver(name, srv=True, dns_server=server, allow_loopback=True, refresh=0.2,
                                        name="kv-retry"),
                            insecure=True, health_interval=30.0, name="kv-retry", connector=connector)
        try:
            pool.start()
            assert list(pool.metrics()["endpoints"]) == ["tcp:127.0.0.1:1"]
            zone.set(name, "SRV", [SRV(0, 0, 2, "127.0.0.1"), SRV(0, 0, 1, "127.0.0.1")])
            assert wait_until(lambda: connector.refusals == 0, 10)
            # the same answer comes back at every lookup: the pool gets it again until it takes it
            assert wait_until(lambda: pool.metrics()["known"] == 2, 10), pool.metrics()
            assert set(pool.metrics()["endpoints"]) == {"tcp:127.0.0.1:1", "tcp:127.0.0.1:2"}
        finally:
            pool.close()


class _Manual:
    """A resolver the test drives: ``on_change`` is the pool's."""

    on_change: Any = None

    def start(self, on_change: Any) -> None:
        self.on_change = on_change
        on_change([Endpoint("tcp", "127.0.0.1:1")])

    def close(self) -> None:
        pass


def test_a_set_with_an_endpoint_that_cannot_be_dialed_leaves_the_pool_as_it_was() -> None:
    resolver = _Manual()
    connector = FlakyConnector("127.0.0.1:3")
    pool = EndpointPool(resolver, insecure=True, health_interval=30.0, name="kv-whole", connector=connector)
    try:
        pool.start()
        generation = pool.generation
        with pytest.raises(OSError):
            resolver.on_change([Endpoint("tcp", "127.0.0.1:2"), Endpoint("tcp", "127.0.0.1:3")])
        # not half-updated: the old endpoint still serves, nothing was added, the built channel is closed
        assert list(pool.metrics()["endpoints"]) == ["tcp:127.0.0.1:1"]
        assert pool.metrics()["draining"] == 0 and pool.generation == generation
        assert len(connector.built) == 2 and _closed(connector.built[1]) and not _closed(connector.built[0])
        resolver.on_change([Endpoint("tcp", "127.0.0.1:2"), Endpoint("tcp", "127.0.0.1:3")])
        assert set(pool.metrics()["endpoints"]) == {"tcp:127.0.0.1:2", "tcp:127.0.0.1:3"}
    finally:
        pool.close()


@pytest.mark.kubernetes
def test_an_endpointslice_set_the_callback_failed_to_take_is_handed_over_again(api: SliceAPI,
                                                                              tmp_path: Path) -> None:
    api.list_body["items"] = [slice_of("kv-a", ["127.0.0.1"], port=1)]
    resolver = EndpointSliceResolver("default", "kv", "grpc", allow_loopback=True,
                                     kubeconfig=api.kubeconfig(tmp_path / "kc"))
    sets: list[list[str]] = []
    refusals = [1]

    def on_change(endpoints: list[Endpoint]) -> None:
        if len(endpoints) == 2 and refusals[0]:
            refusals[0] -= 1
            raise OSError(24, "Too many open files")
        sets.append(sorted(e.address for e in endpoints))

    try:
        resolver.start(on_change)
        assert wait_until(lambda: api.watches >= 1, 10)
        api.events.put({"type": "ADDED", "object": slice_of("kv-b", ["127.0.0.2"], port=1)})
        assert wait_until(lambda: refusals[0] == 0, 10)
        # the next event carries the same set: it is handed over again, and taken
        api.events.put({"type": "MODIFIED", "object": slice_of("kv-b", ["127.0.0.2"], port=1)})
        assert wait_until(lambda: len(sets) == 2, 10), sets
        assert sets[-1] == ["127.0.0.1:1", "127.0.0.2:1"]
    finally:
        resolver.close()
