"""kubernetes:/// discovery against an API server that trickles its answer to the EndpointSlice list a
byte at a time (tests/test_kube_api_deadline.py's TrickleServer: 160 bytes, one per 0.25 s, 40 s in all).

Per-read timeouts never fire there, so the list must be bounded in total: start() fails typed near its
start_timeout, and a kill()/close() from another thread ends a list in progress at once (kill()'s
promise: "that start() ends now"; the watch thread's case is in tests/test_network_kubernetes_close.py).
The bounds asserted
are far below the trickle's 40 s: they tell "ended near its deadline" from "read the whole trickle".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from plugbay import ClientStateError, HandshakeTimeoutError, RemoteClient, RemoteConfig
from plugbay.errors import DiscoveryError, DiscoveryUnavailableError
from plugbay.network.kubernetes import EndpointSliceResolver
from tests.net_util import HANDSHAKE, PLUGINS
from tests.resilience_util import failed_start, wait_until
from tests.test_kube_api_deadline import TrickleServer, ended_early, trickle  # noqa: F401 (a fixture)
from tests.test_kube_api_timeouts import kubeconfig_for

pytestmark = pytest.mark.kubernetes
LIST = "GET /apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector"
PROMPT = 5.0  # seconds: "at once" on a loaded machine, still far from the trickle's 40 s


@pytest.fixture()
def body_trickle() -> Iterator[TrickleServer]:
    server = TrickleServer("body")
    try:
        yield server
    finally:
        server.close()


def _watch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("plugbay-endpointslices-")]


def _cut_short(server: TrickleServer, start: Callable[[], object],
               stop: Callable[[], object]) -> tuple[float, float, list[BaseException | None]]:
    """``start()`` on a thread of its own, ``stop()`` from this one once the list trickles: how long
    stop() took, how long start() went on after it was asked, and how start() ended."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            start()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)

    starter = threading.Thread(target=run, name="test-trickle-start")
    starter.start()
    try:
        assert wait_until(lambda: bool(server.requests), 10), "the list never reached the API server"
        time.sleep(0.5)  # into the trickle
        asked = time.monotonic()
        stop()
        took = time.monotonic() - asked
        starter.join(PROMPT)
        ended = time.monotonic() - asked
    finally:
        starter.join(60)
    return took, ended, outcome


@pytest.mark.timeout(120)
def test_start_fails_typed_near_start_timeout(trickle: TrickleServer, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{trickle.port}"
    client = RemoteClient(RemoteConfig(target="kubernetes:///default/kv:7001", allow_loopback=True,
                                       handshake=HANDSHAKE, plugins=PLUGINS,
                                       insecure=True, start_timeout=2.0, name="kv-trickle",
                                       kubernetes={"kubeconfig": kubeconfig_for(url, tmp_path / "kc")}))
    error, took = failed_start(client, HandshakeTimeoutError)
    assert took < 2.0 + PROMPT, f"start() took {took:.1f}s with start_timeout=2.0"
    text = str(error)
    assert "did not finish within start_timeout (2.0s)" in text, text
    assert f"the Kubernetes API at {url} did not answer list endpointslices within" in text, text
    assert "raise start_timeout" in text, text
    ended_early(trickle, LIST)
    assert not _watch_threads()


@pytest.mark.timeout(120)
def test_the_resolver_alone_fails_typed_by_its_deadline(body_trickle: TrickleServer, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{body_trickle.port}"
    resolver = EndpointSliceResolver("default", "kv", "grpc", allow_loopback=True,
                                     kubeconfig=kubeconfig_for(url, tmp_path / "kc"))
    started = time.monotonic()
    try:
        with pytest.raises(DiscoveryUnavailableError, match=rf"at {url} did not answer list endpointslices"
                                                            r" within 1.5s \(what was left of start_timeout\)"):
            resolver.start(lambda eps: None, deadline=time.monotonic() + 1.5)
        took = time.monotonic() - started
    finally:
        resolver.close()
    assert took < 1.5 + PROMPT, f"start() took {took:.1f}s with a deadline 1.5 s away"
    ended_early(body_trickle, LIST)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["kill", "close"])
def test_kill_during_start_ends_the_list_at_once(body_trickle: TrickleServer, tmp_path: Path, how: str) -> None:
    url = f"http://127.0.0.1:{body_trickle.port}"
    client = RemoteClient(RemoteConfig(target="kubernetes:///default/kv:7001", allow_loopback=True,
                                       handshake=HANDSHAKE, plugins=PLUGINS,
                                       insecure=True, start_timeout=60.0, name="kv-trickle-killed",
                                       kubernetes={"kubeconfig": kubeconfig_for(url, tmp_path / "kc")}))
    took, ended, outcome = _cut_short(body_trickle, client.start, getattr(client, how))
    assert took < PROMPT, f"{how}() took {took:.1f}s during a list the API server trickles"
    assert ended < PROMPT, f"start() went on for {ended:.1f}s after {how}()"
    assert isinstance(outcome[0], ClientStateError) and "was closed (close() or kill()) while it was still" \
        " connecting" in str(outcome[0]), outcome
    ended_early(body_trickle, LIST)
    assert not _watch_threads()


@pytest.mark.timeout(120)
def test_resolver_close_from_another_thread_ends_its_start(body_trickle: TrickleServer, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{body_trickle.port}"
    resolver = EndpointSliceResolver("default", "kv", "grpc", allow_loopback=True,
                                     kubeconfig=kubeconfig_for(url, tmp_path / "kc"))
    # no deadline: 30 s in total
    took, ended, outcome = _cut_short(body_trickle, lambda: resolver.start(lambda eps: None), resolver.close)
    assert took < PROMPT and ended < PROMPT, (took, ended)
    assert isinstance(outcome[0], DiscoveryError) and "was closed" in str(outcome[0]), outcome
    assert resolver._api_client is None
    ended_early(body_trickle, LIST)
    assert not _watch_threads()
