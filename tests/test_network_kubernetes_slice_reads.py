"""Each EndpointSlice is read once, and at most Kubernetes' 1000 endpoints of it are kept.

A watch event changes one slice; every kept slice was read again at each event (1024 slices of 100
endpoints: about 0.8 s of CPU per event). A slice of more endpoints than Kubernetes allows in one (an API
server or a proxy that sent them) keeps 1000 ranked as the resolver's own cap ranks (ready first, then by
address): kept by position, the same endpoints in another order kept another set, and 1000 not ready
listed first kept none ready. Against the loopback stand-in of the EndpointSlice API (tests/slice_api.py):
what is read is counted at the address check every listed endpoint passes (plugbay.network.slices._address,
spied on, not replaced). Of a slice's refused addresses a few are kept to report, not every one.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import pytest

from plugbay import DiscoveryError
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


def _first(addresses: list[str], count: int = slices.MAX_SLICE_ENDPOINTS) -> set[str]:
    """The first ``count`` of ``addresses`` (port 4000) by endpoint address, as the cap ranks them."""
    return set(sorted(addresses, key=lambda a: f"{a}:4000")[:count])


def _huge(name: str, entries: list[tuple[str, bool]], version: str = "1") -> dict[str, Any]:
    slc = slice_of(name, [])
    slc["metadata"]["resourceVersion"] = version
    slc["endpoints"] = [{"addresses": [a], "conditions": {"ready": ready}} for a, ready in entries]
    return slc


def _addresses(endpoints: list[Any], block: int) -> set[str]:
    return {e.address.rpartition(":")[0] for e in endpoints if e.address.startswith(f"10.{block}.")}


def _resolver(api: SliceAPI, tmp_path: Path, sets: EndpointSets) -> EndpointSliceResolver:
    resolver = EndpointSliceResolver("default", "kv", "grpc", kubeconfig=api.kubeconfig(tmp_path / "kc"),
                                     max_endpoints=5000)
    resolver.start(sets)
    return resolver


def _sync(api: SliceAPI, sets: EndpointSets, n: int) -> None:
    """Sends a change of slice kv-marker (its n-th address) and waits for its set: the events before it
    have been taken."""
    api.events.put({"type": "MODIFIED", "object": slice_of("kv-marker", _block(9, n))})
    assert until(lambda: len(_addresses(sets.sets[-1], 9)) == n, 30), len(_addresses(sets.sets[-1], 9))


@pytest.mark.timeout(120)
def test_a_slice_of_more_endpoints_than_kubernetes_allows_keeps_the_same_set_in_any_order(
        api: SliceAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    many = _block(1, 1500)
    api.list_body["items"] = [slice_of("kv-huge", many)]
    caplog.set_level(logging.WARNING, logger="plugbay.network.kubernetes")
    reads = Reads(monkeypatch)
    sets = EndpointSets()
    resolver = _resolver(api, tmp_path, sets)
    try:
        assert _addresses(sets.sets[-1], 1) == _first(many)
        assert reads.count == 1500  # read whole, then ranked
        assert "EndpointSlice 'kv-huge' lists 1500 endpoints; 1000 are used, ready ones first, then by address" \
            in caplog.text
        for n, seed in enumerate((1, 2, 3), start=1):  # the same endpoints, in another order (by position:
            shuffled = list(many)                      # another thousand each time, a pool's churn)
            random.Random(seed).shuffle(shuffled)
            api.events.put({"type": "MODIFIED", "object": _huge("kv-huge", [(a, True) for a in shuffled], str(n))})
            _sync(api, sets, n)
        assert all(_addresses(s, 1) == _first(many) for s in sets.sets)
    finally:
        resolver.close()


@pytest.mark.timeout(120)
def test_a_slice_of_too_many_endpoints_keeps_its_ready_ones_first(api: SliceAPI, tmp_path: Path) -> None:
    waiting, ready = _block(1, 1000), _block(2, 500)  # the ready ones listed after 1000 not ready
    api.list_body["items"] = [_huge("kv-huge", [(a, False) for a in waiting] + [(a, True) for a in ready])]
    sets = EndpointSets()
    resolver = _resolver(api, tmp_path, sets)
    try:
        kept = sets.sets[-1]
        assert {e.address.rpartition(":")[0] for e in kept if e.ready} == set(ready)
        assert _addresses(kept, 1) == _first(waiting, 500)
    finally:
        resolver.close()


@pytest.mark.timeout(120)
def test_the_cap_of_one_slice_is_logged_once_not_at_each_event(api: SliceAPI, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    api.list_body["items"] = [slice_of("kv-huge", _block(1, 1500)), slice_of("kv-big", _block(2, 1200))]
    caplog.set_level(logging.DEBUG, logger="plugbay.network.kubernetes")
    sets = EndpointSets()
    resolver = _resolver(api, tmp_path, sets)
    try:
        for n in range(1, 4):  # each event changes both slices, still too large
            api.events.put({"type": "MODIFIED", "object": slice_of("kv-huge", _block(1, 1500 + n))})
            api.events.put({"type": "MODIFIED", "object": slice_of("kv-big", _block(2, 1200 + n))})
            _sync(api, sets, n)
        said = [(r.levelno, r.getMessage()) for r in caplog.records if "lists" in r.getMessage()]
        assert [level for level, text in said if "'kv-huge' lists" in text] == [logging.WARNING], said
        assert [level for level, text in said if "'kv-big' lists" in text] == [logging.DEBUG], said
    finally:
        resolver.close()


@pytest.mark.timeout(120)
def test_slices_deleted_leave_the_reader(api: SliceAPI, tmp_path: Path) -> None:
    """Slices added and deleted under new names (a controller's churn, or a stream without end) leave
    nothing behind: what the reader holds stays the slices kept, their endpoints' counts and the slices
    the cap was said of included."""
    api.list_body["items"] = [slice_of("kv-0", _block(0, 5))]
    sets = EndpointSets()
    resolver = _resolver(api, tmp_path, sets)
    try:
        for n in range(1, 21):  # the same addresses again and again, and every fifth slice over the cap
            size = slices.MAX_SLICE_ENDPOINTS + n if n % 5 == 0 else n
            api.events.put({"type": "ADDED", "object": slice_of(f"kv-churn-{n}", _block(3, size))})
            api.events.put({"type": "DELETED", "object": slice_of(f"kv-churn-{n}", [])})
        _sync(api, sets, 1)
        reader = resolver._reader
        assert len(reader) == 2  # kv-0 and kv-marker
        assert len(reader._listed) == len(reader._merged) == 6  # their addresses only: no count of 0 kept
        assert reader._capped == set()
        assert {e.address.rpartition(":")[0] for e in sets.sets[-1]} == set(_block(0, 5) + _block(9, 1))
    finally:
        resolver.close()


def test_the_set_kept_between_events_is_the_set_of_all_slices_merged() -> None:
    """The reader keeps its merged set between events and updates only the changed slice's part: after any
    run of changes (addresses moving between slices, listed twice, ready in one and not in another, slices
    deleted), it is what merging all the slices again gives (endpoints_from_slices)."""
    rng = random.Random(7)
    reader = slices.SliceReader("t", "grpc", allow_loopback=False)
    kept: dict[str, dict[str, Any]] = {}
    version = 0
    for _ in range(400):
        name = f"kv-{rng.randrange(6)}"
        if rng.random() < 0.15:
            kept.pop(name, None)
        else:
            version += 1
            picked = rng.sample(range(40), rng.randrange(0, 12))
            entries = [(f"10.0.0.{i + 1}", rng.random() < 0.6) for i in picked]
            entries += entries[:rng.randrange(2)]  # an address listed twice in one slice
            slc = _huge(name, entries, str(version))
            for ep, (_, ready) in zip(slc["endpoints"], entries):
                ep["conditions"]["terminating"] = not ready and rng.random() < 0.3
                ep["targetRef"] = {"name": f"pod-{name}-{version}"}  # which slice's endpoint is used shows
            kept[name] = slc
        assert reader.endpoints(kept, []) == slices.endpoints_from_slices(kept.values(), "grpc")


@pytest.mark.timeout(120)
def test_a_slice_of_many_refused_addresses_keeps_a_few_to_report(api: SliceAPI, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A slice is read whole: every address it refuses was kept, and handed over again at each watch event.
    The first MAX_REFUSED_KEPT are kept to report, and one refused only for being loopback after them (the
    error's allow_loopback advice rests on it)."""
    metadata = [f"169.254.{i // 250}.{i % 250 + 1}" for i in range(1500)]  # link-local: never a replica
    api.list_body["items"] = [slice_of("kv-odd", metadata + ["127.0.0.9"])]
    caplog.set_level(logging.WARNING, logger="plugbay.network.kubernetes")
    resolver = EndpointSliceResolver("default", "kv", "grpc", kubeconfig=api.kubeconfig(tmp_path / "kc"),
                                     max_endpoints=5000)
    try:
        with pytest.raises(DiscoveryError) as err:
            resolver.start(EndpointSets())
        assert resolver.refused == metadata[:slices.MAX_REFUSED_KEPT] + ["127.0.0.9"]
        assert "169.254.0.1, 169.254.0.2, 169.254.0.3, 169.254.0.4, 169.254.0.5 ...: all refused" in str(err.value)
        assert "pass allow_loopback=True" in str(err.value)
        assert len([r for r in caplog.records if "skipping it" in r.getMessage()]) == slices.MAX_REFUSED_KEPT + 1
    finally:
        resolver.close()
