"""Kubernetes discovery keeps at most MAX_ENDPOINTS endpoints, as DNS does (each is a channel with its own
health checks): ready ones first, then by address, with a warning. Against the loopback HTTP stand-in of
the EndpointSlice API (tests/slice_api.py) and a real endpoint pool."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.resilience_util import wait_until
from tests.slice_api import EndpointSets, SliceAPI, api, slice_of  # noqa: F401  (api is a fixture)

from plugbay.network.kubernetes import EndpointSliceResolver
from plugbay.network.pool import EndpointPool
from plugbay.network.resolver import MAX_ENDPOINTS

pytestmark = pytest.mark.kubernetes


def _addresses(block: int, count: int) -> list[str]:
    return [f"127.{block}.{i // 250}.{i % 250 + 1}" for i in range(count)]


def test_three_full_slices_give_the_pool_at_most_max_endpoints_ready_first(
        api: SliceAPI, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # 3 slices of 1000 (Kubernetes' most per slice); the first by address are not ready
    not_ready = slice_of("kv-0", _addresses(1, 1000), port=1)
    for ep in not_ready["endpoints"]:
        ep["conditions"] = {"ready": False}
    api.list_body["items"] = [not_ready, slice_of("kv-1", _addresses(2, 1000), port=1),
                              slice_of("kv-2", _addresses(3, 1000), port=1)]
    caplog.set_level(logging.WARNING, logger="plugbay.network.kubernetes")
    resolver = EndpointSliceResolver("default", "kv", "grpc", allow_loopback=True,
                                     kubeconfig=api.kubeconfig(tmp_path / "kc"))
    pool = EndpointPool(resolver, insecure=True, health_interval=60.0, name="kv-k8s-cap")
    try:
        pool.start()
        metrics = pool.metrics()
        assert metrics["known"] == MAX_ENDPOINTS
        kept = sorted(metrics["endpoints"])
        assert all(key.startswith("tcp:127.2.") for key in kept), kept[:3]  # ready ones, lowest addresses
        assert "the EndpointSlices list 3000 endpoints; using 256 of them (ready ones first" in caplog.text
    finally:
        pool.close()
        resolver.close()


def test_a_watch_event_that_grows_the_set_stays_capped(api: SliceAPI, tmp_path: Path) -> None:
    api.list_body["items"] = [slice_of("kv-a", _addresses(4, 3), port=1)]
    on_change = EndpointSets()
    sets = on_change.sets

    resolver = EndpointSliceResolver("default", "kv", "grpc", allow_loopback=True,
                                     kubeconfig=api.kubeconfig(tmp_path / "kc"))
    try:
        resolver.start(on_change)
        assert [len(s) for s in sets] == [3]
        assert wait_until(lambda: api.watches >= 1, 10)
        grown = slice_of("kv-b", _addresses(5, 1000), port=1)
        for ep in grown["endpoints"][:900]:
            ep["conditions"] = {"terminating": True, "ready": False}
        api.events.put({"type": "ADDED", "object": grown})
        assert wait_until(lambda: len(sets) >= 2, 10), sets
        last = sets[-1]
        # 3 + 100 ready, then the first terminating ones by address (endpoint key order, as DNS's)
        assert len(last) == MAX_ENDPOINTS and sum(e.ready for e in last) == 103, len(last)
        terminating = sorted(f"tcp:{a}:1" for a in _addresses(5, 900))
        assert {e.key for e in last if e.terminating} == set(terminating[:MAX_ENDPOINTS - 103])
        assert [e.key for e in last] == sorted(e.key for e in last)
    finally:
        resolver.close()
