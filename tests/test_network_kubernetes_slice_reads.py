"""Each EndpointSlice is read once, and at most Kubernetes' 1000 endpoints of it.

A watch event changes one slice; every kept slice was read again at each event (1024 slices of 100
endpoints: about 0.8 s of CPU per event), and a slice of more endpoints than Kubernetes allows in one
(an API server or a proxy that sent them) was read to its end, at every event. Against the loopback stand-in of
the EndpointSlice API (tests/slice_api.py): what is read is counted at the address check every listed
endpoint passes (plugbay.network.slices._address, spied on, not replaced).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from plugbay.network import slices
from plugbay.network.kubernetes import EndpointSliceResolver
from tests.slice_api import EndpointSets, SliceAPI, api, slice_of  # noqa: F401  (api is a fixture)
from tests.thread_util import until

pytestmark = pytest.mark.kubernetes


def _block(n: int, count: int) -> list[str]:
    return [f"10.{n}.{i // 250}.{i % 250 + 1}" for i in range(count)]


class Reads:
    """Counts the endpoint addresses the resolver checks (each listed endpoint read is one)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        check = slices._address

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return check(*args, **kwargs)

        monkeypatch.setattr(slices, "_address", counted)


@pytest.mark.timeout(120)
def test_a_watch_event_reads_only_the_slice_it_changes(api: SliceAPI, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    api.list_body["items"] = [slice_of(f"kv-{n}", _block(n, 20)) for n in range(30)]
    reads = Reads(monkeypatch)
    sets = EndpointSets()
    resolver = EndpointSliceResolver("default", "kv", "grpc", kubeconfig=api.kubeconfig(tmp_path / "kc"),
                                     max_endpoints=1000)
    resolver.start(sets)
    try:
        assert len(sets.sets[-1]) == 600 and reads.count == 600
        api.events.put({"type": "MODIFIED", "object": slice_of("kv-3", _block(3, 21))})
        assert until(lambda: len(sets.sets[-1]) == 601, 30), len(sets.sets[-1])
        assert reads.count == 600 + 21  # the changed slice only (every kept one was read again: 600 more)
        api.events.put({"type": "DELETED", "object": slice_of("kv-4", [])})
        assert until(lambda: len(sets.sets[-1]) == 581, 30), len(sets.sets[-1])
        assert reads.count == 621
        addresses = {e.address.rpartition(":")[0] for e in sets.sets[-1]}
        assert addresses == {a for n in range(30) if n != 4 for a in _block(n, 21 if n == 3 else 20)}
    finally:
        resolver.close()


@pytest.mark.timeout(120)
def test_a_slice_of_more_endpoints_than_kubernetes_allows_is_read_to_its_thousandth(
        api: SliceAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    many = _block(1, 1500)
    api.list_body["items"] = [slice_of("kv-huge", many)]
    caplog.set_level(logging.WARNING, logger="plugbay.network.kubernetes")
    reads = Reads(monkeypatch)
    sets = EndpointSets()
    resolver = EndpointSliceResolver("default", "kv", "grpc", kubeconfig=api.kubeconfig(tmp_path / "kc"),
                                     max_endpoints=2000)
    resolver.start(sets)
    try:
        assert sorted(e.address.rpartition(":")[0] for e in sets.sets[-1]) == sorted(many[:1000])
        assert reads.count == 1000
        assert "EndpointSlice 'kv-huge' lists 1500 endpoints; only its first 1000 are read" in caplog.text
    finally:
        resolver.close()
