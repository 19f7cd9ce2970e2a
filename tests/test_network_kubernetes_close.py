"""The EndpointSlice resolver's edges against a loopback HTTP stand-in of the API (tests/slice_api.py):
closed from its own watch thread, closed during a relist the API server holds, and malformed answers."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.resilience_util import wait_until
from tests.slice_api import SliceAPI, api, slice_of  # noqa: F401  (api is a fixture)

from plugbay.errors import DiscoveryError
from plugbay.network.kubernetes import EndpointSliceResolver
from plugbay.network.pool import EndpointPool

pytestmark = pytest.mark.kubernetes


def _watch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("plugbay-endpointslices-")]


def test_the_pool_closed_from_a_callback_on_the_watch_thread_closes_everything(api: SliceAPI,
                                                                                tmp_path: Path) -> None:
    api.list_body["items"] = [slice_of("kv-a", ["127.0.0.1"], port=1)]
    resolver = EndpointSliceResolver("default", "kv", "grpc", allow_loopback=True,
                                     kubeconfig=api.kubeconfig(tmp_path / "kc"))
    pool = EndpointPool(resolver, insecure=True, health_interval=30.0, name="kv-k8s")
    failures: list[BaseException] = []
    closed_on: list[str] = []

    def on_state(state: Any) -> None:  # a subscriber that gives up on the first change discovery reports
        if threading.current_thread().name.startswith("plugbay-endpointslices-") and not closed_on:
            closed_on.append(threading.current_thread().name)
            try:
                pool.close()
            except BaseException as exc:  # noqa: BLE001 - the test inspects it
                failures.append(exc)

    try:
        pool.start()
        assert pool.metrics()["known"] == 1
        pool.subscribe(on_state)
        assert wait_until(lambda: api.watches >= 1, 10)
        api.events.put({"type": "ADDED", "object": slice_of("kv-b", ["127.0.0.2"], port=1)})
        assert wait_until(lambda: bool(closed_on), 10)
        assert failures == [], failures
        assert pool.closed and pool.metrics()["known"] == 0  # every channel closed
        assert resolver._api_client is None  # and the API client too
        assert wait_until(lambda: not _watch_threads(), 10), _watch_threads()
    finally:
        pool.close()
        resolver.close()


def test_close_during_a_relist_the_api_server_holds_returns_soon(api: SliceAPI, tmp_path: Path) -> None:
    resolver = EndpointSliceResolver("default", "kv", "grpc", allow_loopback=True,
                                     kubeconfig=api.kubeconfig(tmp_path / "kc"))
    try:
        resolver.start(lambda eps: None)
        assert wait_until(lambda: api.watches >= 1, 10)
        api.hang_lists.set()
        # the API server no longer has the watch's version: the resolver lists again, which the server holds
        api.events.put({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                                  "message": "too old"}})
        assert wait_until(lambda: api.lists >= 2, 15), (api.lists, api.watches)
        time.sleep(0.3)  # into the held list
        started = time.monotonic()
        resolver.close()
        took = time.monotonic() - started
        assert took < 5.0, f"close() waited {took:.1f}s for a list the API server held (read timeout 30 s)"
        # not only close() returns: the watch thread's list ends with it (it ran out its 30 s before)
        assert wait_until(lambda: not _watch_threads(), 5.0), _watch_threads()
        assert resolver.last_error is None or "was closed" not in str(resolver.last_error)
    finally:
        api.close()
        resolver.close()
    assert wait_until(lambda: not _watch_threads(), 15), _watch_threads()


@pytest.mark.parametrize("bad", [
    {"addressType": "IPv4", "endpoints": [{"conditions": {"ready": True}}]},  # an endpoint without addresses
    {"endpoints": [{"addresses": ["10.0.0.1"]}]},  # no addressType
    {"addressType": "IPv4", "endpoints": ["10.0.0.1"]},  # an endpoint that is no object
])
def test_a_malformed_endpointslice_is_a_discovery_error(api: SliceAPI, tmp_path: Path, bad: dict[str, Any]) -> None:
    api.list_body["items"] = [{"metadata": {"name": "kv-x"}, **bad}]
    resolver = EndpointSliceResolver("default", "kv", "grpc", allow_loopback=True,
                                     kubeconfig=api.kubeconfig(tmp_path / "kc"))
    with pytest.raises(DiscoveryError) as err:
        resolver.start(lambda eps: None)
    text = str(err.value)
    assert f"the Kubernetes API at {api.url} answered list endpointslices with something that is not" in text
    assert "kubernetes:///default/kv:grpc" in text
    assert not _watch_threads()


class _FailingClose:
    """A resolver whose close() fails (as the Kubernetes one did on its own thread)."""

    def __init__(self, address: str) -> None:
        self.address = address

    def start(self, on_change: Any) -> None:
        from plugbay.network.resolver import Endpoint

        on_change([Endpoint("tcp", self.address)])

    def close(self) -> None:
        raise RuntimeError("resolver close failed")


def test_the_pool_closes_its_channels_even_when_the_resolver_fails_to_close() -> None:
    pool = EndpointPool(_FailingClose("127.0.0.1:1"), insecure=True, health_interval=30.0, name="kv-fail")
    pool.start()
    channel = pool.channel_of("tcp:127.0.0.1:1")
    assert channel is not None
    with pytest.raises(RuntimeError, match="resolver close failed"):
        pool.close()
    assert pool.metrics()["known"] == 0
    with pytest.raises(ValueError, match="closed channel"):  # grpc's own word for a channel closed
        channel.unary_unary("/x.Y/Z")(b"", timeout=1.0)


def test_start_timeout_covers_the_first_list(api: SliceAPI, tmp_path: Path) -> None:
    from plugbay import HandshakeTimeoutError, RemoteClient, RemoteConfig
    from tests.net_util import HANDSHAKE, PLUGINS

    api.hang_lists.set()  # the API server holds the list (its read timeout is 30 s)
    cfg = RemoteConfig(target="kubernetes:///default/kv:grpc", allow_loopback=True, handshake=HANDSHAKE,
                       plugins=PLUGINS,
                       insecure=True, kubernetes={"kubeconfig": api.kubeconfig(tmp_path / "kc")},
                       start_timeout=1.0, name="kv-slow-api")
    started = time.monotonic()
    with pytest.raises(HandshakeTimeoutError) as err:
        RemoteClient(cfg).start()
    took = time.monotonic() - started
    assert took < 5.0, f"start() took {took:.1f}s with start_timeout=1.0: {err.value}"
    assert "did not finish within start_timeout (1.0s)" in str(err.value)
    api.hang_lists.clear()


@pytest.mark.parametrize("status, kind, words", [
    (403, "DiscoveryPermissionError", 'API group "discovery.k8s.io"'),
    (401, "DiscoveryPermissionError", "refresh the kubeconfig's token"),
    (404, "DiscoveryError", "needs Kubernetes 1.21 or later"),
    (500, "DiscoveryError", "Kubernetes API list endpointslices in 'default' failed: 500"),
])
def test_api_refusals_are_discovery_errors(api: SliceAPI, tmp_path: Path, status: int, kind: str,
                                           words: str) -> None:
    import plugbay

    api.list_status = status
    resolver = EndpointSliceResolver("default", "kv", "grpc", allow_loopback=True,
                                     kubeconfig=api.kubeconfig(tmp_path / "kc"))
    with pytest.raises(plugbay.DiscoveryError) as err:
        resolver.start(lambda eps: None)
    assert type(err.value).__name__ == kind and words in str(err.value)
    if status in (401, 403):  # still what a runner's permission trouble is, for code that catches that
        assert isinstance(err.value, plugbay.PermissionDeniedError)


def test_an_unreachable_api_or_no_kubeconfig_is_a_discovery_error(tmp_path: Path) -> None:
    import plugbay

    gone = SliceAPI()
    kubeconfig = gone.kubeconfig(tmp_path / "kc")
    gone.close()  # nobody listens there now
    for kw in ({"kubeconfig": kubeconfig}, {"kubeconfig": str(tmp_path / "missing")}):
        with pytest.raises(plugbay.DiscoveryUnavailableError) as err:
            EndpointSliceResolver("default", "kv", "grpc", **kw).start(lambda eps: None)  # type: ignore[arg-type]
        assert isinstance(err.value, plugbay.DiscoveryError) and isinstance(err.value, plugbay.EngineUnavailableError)
        assert "kubernetes:///default/kv:grpc" in str(err.value)


class _EndsAtOnce:
    """Watch events as SliceAPI takes them: every watch ends at once, with no event (a proxy cutting them)."""

    def get(self, timeout: float | None = None) -> None:
        return None


def test_watches_that_end_at_once_with_no_event_are_backed_off(api: SliceAPI, tmp_path: Path) -> None:
    """Such a watch counted as a good one: the resolver watched again at once, a hot loop of requests."""
    api.list_body["items"] = [slice_of("kv-a", ["10.0.0.1"])]
    api.events = _EndsAtOnce()  # type: ignore[assignment]
    resolver = EndpointSliceResolver("default", "kv", "grpc", allow_loopback=True,
                                     kubeconfig=api.kubeconfig(tmp_path / "kc"))
    resolver.start(lambda endpoints: None)
    try:
        time.sleep(1.5)
        assert api.watches <= 6  # backoff 0.2, 0.4, 0.8 s...
        assert isinstance(resolver.last_error, DiscoveryError) and "no event" in str(resolver.last_error)
    finally:
        resolver.close()


class _AlwaysGone:
    """Watch events as SliceAPI takes them: every watch gets 410 Gone at once (a proxy or an API server
    that refuses every watch so)."""

    def __init__(self) -> None:
        self.taken = 0

    def get(self, timeout: float | None = None) -> Any:
        self.taken += 1
        return {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                             "code": 410, "reason": "Expired",
                                             "message": "too old resource version"}}  # the watch ends on it


def test_watches_answered_410_gone_every_time_are_backed_off(api: SliceAPI, tmp_path: Path) -> None:
    """Every 410 relisted and watched again at once: hundreds of lists a second."""
    api.list_body["items"] = [slice_of("kv-a", ["10.0.0.1"])]
    api.events = _AlwaysGone()  # type: ignore[assignment]
    resolver = EndpointSliceResolver("default", "kv", "grpc", kubeconfig=api.kubeconfig(tmp_path / "kc"))
    resolver.start(lambda endpoints: None)
    try:
        time.sleep(2.0)
        # the first 410 lists again at once, the next ones wait 0.2, 0.4, 0.8 s...
        assert api.lists <= 8 and api.watches <= 8, (api.lists, api.watches)
        assert isinstance(resolver.last_error, DiscoveryError) and "410 Gone" in str(resolver.last_error)
    finally:
        resolver.close()


def test_a_410_after_a_watch_that_delivered_events_lists_again_at_once(api: SliceAPI, tmp_path: Path) -> None:
    gone = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
                                        "reason": "Expired", "message": "too old resource version"}}
    api.list_body["items"] = [slice_of("kv-a", ["10.0.0.1"])]
    resolver = EndpointSliceResolver("default", "kv", "grpc", kubeconfig=api.kubeconfig(tmp_path / "kc"))
    resolver.start(lambda endpoints: None)
    try:
        for round_ in range(1, 4):  # each watch delivers an event, then its version expires
            assert wait_until(lambda: api.watches == round_, 10), (api.watches, round_)
            api.events.put({"type": "ADDED", "object": slice_of(f"kv-{round_}", ["10.0.1.%d" % round_])})
            api.events.put(gone)  # the watch ends on it
            assert wait_until(lambda: api.lists == round_ + 1, 10)
            assert resolver.last_error is None  # an expiry, not a failure to pause after
    finally:
        resolver.close()


def test_an_event_sent_right_after_a_410_reaches_the_next_watch(api: SliceAPI, tmp_path: Path) -> None:
    gone = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
                                        "reason": "Expired", "message": "too old resource version"}}
    api.list_body["items"] = [slice_of("kv-a", ["10.0.0.1"])]
    seen: list[set[str]] = []
    resolver = EndpointSliceResolver("default", "kv", "grpc", kubeconfig=api.kubeconfig(tmp_path / "kc"))
    resolver.start(lambda endpoints: seen.append({e.address for e in endpoints}))
    try:
        assert wait_until(lambda: api.watches == 1, 10)
        api.events.put(gone)
        # queued at once: the first watch is over (its client dropped it on the 410), so this is the next one's
        api.events.put({"type": "ADDED", "object": slice_of("kv-b", ["10.0.0.2"])})
        assert wait_until(lambda: bool(seen) and "10.0.0.2:4000" in seen[-1], 10), (seen, api.watches)
    finally:
        resolver.close()
