"""The EndpointSlice resolver takes the API server's slices as untrusted input: a watch that adds slice
names without end, or a list of more slices than any Service has, is kept to MAX_SLICES (a watch grew
the host's memory, and each event's work, without bound).

Against the loopback stand-in of the API (tests/slice_api.py), which streams the watch events put here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from plugbay.network.kubernetes import EndpointSliceResolver
from plugbay.network.slices import MAX_SLICES
from tests.slice_api import EndpointSets, SliceAPI, api, slice_of  # noqa: F401  (api is a fixture)
from tests.thread_util import until

pytestmark = pytest.mark.kubernetes


def _resolver(api: SliceAPI, tmp_path: Path) -> EndpointSliceResolver:
    return EndpointSliceResolver("default", "kv", "grpc", kubeconfig=api.kubeconfig(tmp_path / "kc"))


def _addresses(sets: EndpointSets) -> list[str]:
    return [e.address for e in sets.sets[-1]] if sets.sets else []


@pytest.mark.timeout(120)
def test_a_watch_adding_slices_without_end_keeps_at_most_max_slices(api: SliceAPI, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    api.list_body["items"] = [slice_of("kv-a", ["10.1.0.5"])]
    caplog.set_level(logging.WARNING, logger="plugbay.network.kubernetes")
    sets = EndpointSets()
    resolver = _resolver(api, tmp_path)
    resolver.start(sets)
    try:
        assert _addresses(sets) == ["10.1.0.5:4000"]
        filler = [slice_of(f"kv-empty-{n}", []) for n in range(MAX_SLICES - 1)]  # no endpoints: only a count
        more = [slice_of(f"kv-more-{n}", []) for n in range(100)]  # named past kv-late
        for obj in [*filler, slice_of("kv-late", ["10.1.0.9"]), *more]:
            api.events.put({"type": "ADDED", "object": obj})
        # a slice kept already still changes: the events before this one have all been read once it shows
        api.events.put({"type": "MODIFIED", "object": slice_of("kv-a", ["10.1.0.6"])})
        assert until(lambda: "10.1.0.6:4000" in _addresses(sets), 60), sets.sets[-1:]
        assert _addresses(sets) == ["10.1.0.6:4000"]  # kv-late came past the cap: not kept
        assert len(resolver._slices) == MAX_SLICES
        said = [r.getMessage() for r in caplog.records if "a watch event adds EndpointSlice" in r.getMessage()]
        assert len(said) == 1 and f"at most {MAX_SLICES} of one Service are kept" in said[0], said
        assert "'kv-late'" in said[0], said
        # one kept gone makes room for kv-late, which the watch does not send again: the slices are listed
        # again, as the API server now holds them, and the first by name kept (kv-late, not the kv-more ones)
        api.list_body["items"] = [slice_of("kv-a", ["10.1.0.6"]), *filler[1:], slice_of("kv-late", ["10.1.0.9"]),
                                  *more]
        caplog.clear()
        api.events.put({"type": "DELETED", "object": filler[0]})
        assert until(lambda: "10.1.0.9:4000" in _addresses(sets), 30), (api.lists, sets.sets[-1:])
        assert _addresses(sets) == ["10.1.0.6:4000", "10.1.0.9:4000"]
        assert api.lists == 2 and len(resolver._slices) == MAX_SLICES
        assert "kv-empty-0" not in resolver._slices and "kv-more-0" not in resolver._slices
        # the new list's refusals are said again, as a warning
        assert [r.levelname for r in caplog.records if f"the list has {MAX_SLICES + 100} EndpointSlices"
                in r.getMessage()] == ["WARNING"], caplog.text
        assert resolver.last_error is None, resolver.last_error
    finally:
        resolver.close()


@pytest.mark.timeout(60)
def test_a_listed_service_of_more_than_max_slices_keeps_the_first_by_name(api: SliceAPI, tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    api.list_body["items"] = [slice_of(f"kv-{n:05d}", [f"10.2.{n // 250}.{n % 250 + 1}"])
                              for n in range(MAX_SLICES + 10)]
    caplog.set_level(logging.WARNING, logger="plugbay.network.kubernetes")
    sets = EndpointSets()
    resolver = _resolver(api, tmp_path)
    resolver.start(sets)
    try:
        assert len(resolver._slices) == MAX_SLICES
        assert sorted(resolver._slices)[-1] == f"kv-{MAX_SLICES - 1:05d}"
        assert f"the list has {MAX_SLICES + 10} EndpointSlices" in caplog.text
    finally:
        resolver.close()
