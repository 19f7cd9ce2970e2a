"""The EndpointSlice resolver takes the Kubernetes API's answers as input: slices of other Services,
watches the server ends at once, and a watch whose answer head trickles in.

Against a loopback stand-in of the API (tests/slice_api.py), and for the trickle a socket server of
its own here that answers the list and then trickles each watch's head a byte at a time. Speeds are
bounded by request counts over a time window, never by timings.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugbay.errors import DiscoveryUnavailableError
from plugbay.network import kubernetes as slice_watch
from plugbay.network.kubernetes import EndpointSliceResolver
from tests.loopback_http_util import ListThenWatch
from tests.slice_api import EndpointSets, SliceAPI, api, slice_of  # noqa: F401  (api is a fixture)
from tests.test_kube_api_timeouts import kubeconfig_for
from tests.thread_util import until

pytestmark = pytest.mark.kubernetes
BOOKMARK = {"type": "BOOKMARK", "object": {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                                           "metadata": {"resourceVersion": "1"}}}


def _resolver(api: SliceAPI, tmp_path: Path, **kwargs: Any) -> EndpointSliceResolver:
    return EndpointSliceResolver("default", "kv", "grpc", kubeconfig=api.kubeconfig(tmp_path / "kc"), **kwargs)


def _watches_in(api: SliceAPI, resolver: EndpointSliceResolver, seconds: float) -> int:
    first = api.watches
    time.sleep(seconds)
    return api.watches - first


def test_a_watch_ended_right_after_a_bookmark_is_backed_off(api: SliceAPI, tmp_path: Path) -> None:
    api.list_body["items"] = [slice_of("kv-1", ["10.1.0.5"])]
    for _ in range(3000):  # each watch: one bookmark, then the server hangs up
        api.events.put(BOOKMARK)
        api.events.put(None)
    resolver = _resolver(api, tmp_path)
    resolver.start(EndpointSets())
    try:
        watches = _watches_in(api, resolver, 3)
    finally:
        resolver.close()
    assert watches < 20, f"{watches} watches in 3 s: re-opened as fast as the server hung up"
    assert "no change" in str(resolver.last_error)


def test_a_watch_ended_right_after_each_change_is_paced(api: SliceAPI, tmp_path: Path) -> None:
    api.list_body["items"] = [slice_of("kv-1", ["10.1.0.5"])]
    for n in range(3000):  # each watch: a real change, then the server hangs up
        api.events.put({"type": "MODIFIED", "object": slice_of("kv-1", [f"10.1.{n // 250}.{n % 250 + 1}"])})
        api.events.put(None)
    sets = EndpointSets()
    resolver = _resolver(api, tmp_path)
    resolver.start(sets)
    try:
        watches = _watches_in(api, resolver, 3)
    finally:
        resolver.close()
    assert watches < 20, f"{watches} watches in 3 s"
    assert len(sets.sets) > 2  # the changes were still taken


def test_slices_of_another_service_are_ignored(api: SliceAPI, tmp_path: Path) -> None:
    # a server (or proxy) that ignores the label selector answers every slice of the namespace
    other_namespace = slice_of("kv-2", ["10.1.0.8"])
    other_namespace["metadata"]["namespace"] = "prod"
    unlabelled = slice_of("kv-3", ["10.1.0.9"])
    del unlabelled["metadata"]["labels"]
    api.list_body["items"] = [slice_of("kv-1", ["10.1.0.5"]), slice_of("db-1", ["10.9.9.9"], service="postgres"),
                              other_namespace, unlabelled]
    sets = EndpointSets()
    resolver = _resolver(api, tmp_path)
    resolver.start(sets)
    try:
        assert [e.address for e in sets.sets[-1]] == ["10.1.0.5:4000"]
        api.events.put({"type": "ADDED", "object": slice_of("db-2", ["10.9.9.10"], service="postgres")})
        api.events.put({"type": "ADDED", "object": slice_of("kv-4", ["10.1.0.6"])})
        assert until(lambda: [e.address for e in sets.sets[-1]] == ["10.1.0.5:4000", "10.1.0.6:4000"], 10), sets.sets
        # a slice of ours relabelled to another Service is no longer ours
        api.events.put({"type": "MODIFIED", "object": slice_of("kv-1", ["10.1.0.5"], service="postgres")})
        assert until(lambda: [e.address for e in sets.sets[-1]] == ["10.1.0.6:4000"], 10), sets.sets
    finally:
        resolver.close()
    assert all("10.9.9" not in e.address and e.address not in ("10.1.0.8:4000", "10.1.0.9:4000")
               for found in sets.sets for e in found)


class HeadTrickle(ListThenWatch):
    """Answers the endpointslices list at once, and trickles each watch's head a byte every 0.2 s (``hung_up``:
    the watches whose client went away before the head was whole)."""

    LIST = json.dumps({"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
                       "metadata": {"resourceVersion": "1"}, "items": []}).encode()

    def __init__(self) -> None:
        super().__init__("test-head-trickle", conn_timeout=5)

    def watch(self, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Pad: ")
        while not self.stopping.wait(0.2):
            conn.sendall(b"a")


@pytest.fixture()
def head_trickle() -> Iterator[HeadTrickle]:
    with HeadTrickle() as server:
        yield server


def _watch_thread(resolver: EndpointSliceResolver) -> threading.Thread:
    thread = resolver._thread
    assert thread is not None
    return thread


@pytest.mark.timeout(60)
def test_close_ends_a_watch_whose_head_trickles(head_trickle: HeadTrickle, tmp_path: Path) -> None:
    resolver = EndpointSliceResolver("default", "kv", 4000, watch_timeout=2,
                                     kubeconfig=kubeconfig_for(head_trickle.url, tmp_path / "kc"))
    resolver.start(EndpointSets())
    assert until(lambda: head_trickle.watches == 1, 10)
    time.sleep(0.5)  # the head is under way
    resolver.close()
    thread = _watch_thread(resolver)
    thread.join(timeout=3)
    assert not thread.is_alive(), "the watch thread outlived close(), still reading the trickled head"


@pytest.mark.timeout(60)
def test_a_watch_head_that_trickles_is_bounded_in_total(head_trickle: HeadTrickle, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slice_watch, "WATCH_HEAD_TIMEOUT", 1.5, raising=False)
    resolver = EndpointSliceResolver("default", "kv", 4000, watch_timeout=2,
                                     kubeconfig=kubeconfig_for(head_trickle.url, tmp_path / "kc"))
    resolver.start(EndpointSets())
    try:
        # per-read timeouts (watch_timeout + 30 s) never fire on a byte every 0.2 s: only a total bound ends it
        assert until(lambda: isinstance(resolver.last_error, DiscoveryUnavailableError), 15), resolver.last_error
        assert "did not answer the endpointslices watch" in str(resolver.last_error)
        assert until(lambda: head_trickle.watches >= 2, 10)  # and the next watch is tried
    finally:
        resolver.close()
