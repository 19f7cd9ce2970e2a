"""The EndpointSlice resolver's list is read to at most MAX_LIST_BYTES: the API server's answer is untrusted
input, and a list of any size (1024 slices of 1000 endpoints, or one without end within the list's time
limit) was read whole into the host's memory, then held again by the client's models. Past the bound the
list fails with a DiscoveryError that says so: start() raises it; a later list leaves the endpoints known
in place and is the watch loop's last_error, retried as other list failures are.

Against the loopback stand-in of the API (tests/slice_api.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plugbay.errors import DiscoveryError
from plugbay.network.kubernetes import EndpointSliceResolver
from plugbay.network.slicecalls import MAX_LIST_BYTES
from tests.slice_api import EndpointSets, SliceAPI, api, slice_of  # noqa: F401  (api is a fixture)
from tests.thread_util import until

pytestmark = pytest.mark.kubernetes


def _oversized(items: list[dict[str, object]]) -> bytes:
    """A valid list of ``items`` (as JSON, parsed whole by the old code) padded with blanks past MAX_LIST_BYTES."""
    body = {"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1", "metadata": {"resourceVersion": "7"},
            "items": items}
    text = json.dumps(body).encode()
    return text[:-1] + b" " * (MAX_LIST_BYTES + 1) + text[-1:]


def _resolver(api: SliceAPI, tmp_path: Path) -> EndpointSliceResolver:
    return EndpointSliceResolver("default", "kv", "grpc", kubeconfig=api.kubeconfig(tmp_path / "kc"))


@pytest.mark.timeout(120)
def test_a_list_past_max_list_bytes_fails_the_start_saying_so(api: SliceAPI, tmp_path: Path) -> None:
    api.list_body = _oversized([slice_of("kv-a", ["10.1.0.5"])])
    resolver = _resolver(api, tmp_path)
    try:
        with pytest.raises(DiscoveryError) as err:
            resolver.start(EndpointSets())
        text = str(err.value)
        assert f"more than {MAX_LIST_BYTES >> 20} MiB" in text and "kubernetes:///default/kv:grpc" in text, text
        assert api.url in text and "server URL" in text, text
    finally:
        resolver.close()


@pytest.mark.timeout(120)
def test_a_relist_past_max_list_bytes_keeps_the_endpoints_known(api: SliceAPI, tmp_path: Path) -> None:
    api.list_body["items"] = [slice_of("kv-a", ["10.1.0.5"])]
    sets = EndpointSets()
    resolver = _resolver(api, tmp_path)
    resolver.start(sets)
    try:
        assert [e.address for e in sets.sets[-1]] == ["10.1.0.5:4000"]
        assert until(lambda: api.watches >= 1, 10)
        api.list_body = _oversized([slice_of("kv-b", ["10.1.0.9"])])
        # the API server no longer has the watch's version: the resolver lists again
        api.events.put({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                                  "message": "too old"}})
        assert until(lambda: isinstance(resolver.last_error, DiscoveryError)
                     and "MiB" in str(resolver.last_error), 60), (api.lists, resolver.last_error)
        assert f"more than {MAX_LIST_BYTES >> 20} MiB" in str(resolver.last_error)
        assert [e.address for e in sets.sets[-1]] == ["10.1.0.5:4000"]  # nothing of the cut answer was used
    finally:
        resolver.close()
