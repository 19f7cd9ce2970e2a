"""A bounded Kubernetes API call does not wait out a Retry-After past its deadline or its Cancel.

urllib3's Retry (the runner's own and urllib3's default, a given ApiClient's) answers a 429, 503 or 413
that carries Retry-After by sleeping the seconds the server names, inside urllib3, then asking again.
Kubernetes API Priority and Fairness answers 429 TooManyRequests with Retry-After; the stand-in's
throttle knob answers so. Without the fix a call bounded to 1 s slept the 30 s the server asked for,
and a Cancel did not end the sleep. A call whose bound is far off, or that has none, still waits and asks
again as urllib3's Retry says. The time checks are bounds (the call must not wait the 30 s out), with
margin, not speed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("kubernetes")

from kubernetes import client, config  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402

from plugbay.errors import EngineUnavailableError, RunnerError  # noqa: E402
from plugbay.runners.kubernetes import sweep  # noqa: E402
from plugbay.runners.kubernetes.api import load_api_client, within_deadline  # noqa: E402
from tests.kube_standin.fixtures import server  # noqa: E402, F401 - the test's own stand-in
from tests.kube_throttled_list import cancel_while_it_waits, ends_with_its_bound  # noqa: E402
from tests.kube_standin.server import StandIn  # noqa: E402

pytestmark = pytest.mark.kubernetes
LIST = ("list", "pods")
MARGIN = 8.0  # seconds: far under the 30 s the server asks for, far over the 1 s bound


@pytest.fixture(params=["runner's", "given"])
def api_client(request: pytest.FixtureRequest, server: StandIn) -> Iterator[Any]:
    """The runner's own client (plugbay's Retry) or a user's (urllib3's default Retry: total=3)."""
    api = (load_api_client(server.kubeconfig_path)[0] if request.param == "runner's"
           else config.new_client_from_config(config_file=server.kubeconfig_path))
    try:
        yield api
    finally:
        api.close()


class _Retrying(logging.Handler):
    """Set when urllib3 has counted a status retry: it sleeps for it next."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Incremented Retry"):
            self.seen.set()


@pytest.fixture
def retrying() -> Iterator[_Retrying]:
    logger = logging.getLogger("urllib3.util.retry")
    handler, level = _Retrying(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.mark.timeout(120)
def test_a_retry_after_past_the_deadline_ends_with_it(server: StandIn, api_client: Any) -> None:
    ends_with_its_bound(server, api_client)


@pytest.mark.timeout(120)
def test_a_status_retry_backoff_past_the_deadline_ends_with_it(server: StandIn) -> None:
    """A user's Retry that retries a 500 with a backoff: its wait (60 s before the third ask) is urllib3's
    other sleep between answers; it ends with the call's deadline too."""
    from urllib3.util.retry import Retry

    cfg = type.__call__(client.Configuration)  # not a copy of the process-wide default
    config.load_kube_config(config_file=server.kubeconfig_path, client_configuration=cfg)
    cfg.retries = Retry(total=3, status_forcelist=[500], backoff_factor=30)
    server.fail(*LIST)
    began = time.monotonic()
    with client.ApiClient(cfg) as api_client, pytest.raises(
            EngineUnavailableError, match="answered list pods 500, and the call's limit of 1s ran out during the"
                                          " client's Retry backoff of 60s"):
        sweep("default", api_client=api_client, api_timeout=1)
    took = time.monotonic() - began
    assert took < MARGIN, f"the call bounded to 1s took {took:.1f}s: it waited out the backoff"
    assert server.calls[LIST] == 2  # the second ask came at once (no backoff yet), no third after the deadline


@pytest.mark.timeout(120)
def test_a_cancel_ends_a_retry_after_wait(server: StandIn, api_client: Any, retrying: _Retrying) -> None:
    cancel_while_it_waits(server, api_client, lambda _thread: retrying.seen.wait(20), "plugbay-test-throttled-list")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("bound", [None, 30])
def test_a_retry_after_within_the_bound_or_unbounded_is_waited_and_asked_again(server: StandIn, api_client: Any,
                                                                               bound: int | None) -> None:
    """urllib3's Retry as it was: a 1 s Retry-After is slept and the list asked again until the Retry's
    total (3) is used up; the last 429 is the caller's answer."""
    server.throttle(*LIST, retry_after=1)
    with pytest.raises((ApiException, RunnerError), match="429"):
        if bound is None:
            client.CoreV1Api(api_client).list_namespaced_pod("default")
        else:
            sweep("default", api_client=api_client, api_timeout=bound)
    assert server.calls[LIST] == 4  # the first ask and the Retry's 3


@pytest.mark.timeout(120)
def test_a_retry_subclass_keeps_its_own_wait_in_a_bounded_call(server: StandIn) -> None:
    """A user's Retry whose sleep() waits 0.1 s whatever the server asks keeps doing so inside a bounded
    call (only urllib3's own waits are bounded by plugbay): the 2 s Retry-After is not slept."""
    from urllib3.util.retry import Retry

    class ShortWaits(Retry):  # type: ignore[misc]
        def sleep(self, response: Any = None) -> None:
            time.sleep(0.1)

    cfg = type.__call__(client.Configuration)
    config.load_kube_config(config_file=server.kubeconfig_path, client_configuration=cfg)
    cfg.retries = ShortWaits(total=3)
    server.throttle(*LIST, retry_after=2)
    began = time.monotonic()
    with client.ApiClient(cfg) as api_client, pytest.raises(ApiException, match="429"):
        within_deadline(api_client, client.CoreV1Api(api_client).list_namespaced_pod, "default",
                        _request_timeout=(30, 30))
    assert server.calls[LIST] == 4
    assert time.monotonic() - began < 5.0, "the subclass's 0.1 s waits were replaced by the 2 s Retry-After"


@pytest.mark.timeout(120)
def test_a_throttled_endpointslice_list_says_the_api_answered(server: StandIn) -> None:
    """kubernetes:/// discovery whose list is throttled past start()'s deadline: the error names the 429."""
    from plugbay.errors import DiscoveryUnavailableError
    from plugbay.network.kubernetes import EndpointSliceResolver

    server.throttle("list", "endpointslices", retry_after=30)
    resolver = EndpointSliceResolver("default", "kv", "grpc", allow_loopback=True, kubeconfig=server.kubeconfig_path)
    began = time.monotonic()
    try:
        # the limit is what is left of start()'s 1.5 s when the list is made: less on a loaded machine
        with pytest.raises(DiscoveryUnavailableError,
                           match=r"answered list endpointslices 429 \(throttled: API Priority and Fairness, or an"
                                 r" overloaded server\), asking to be asked again in 30s; the call's limit of 1\.\ds"
                                 r" ran out while it waited\. Retry later, or raise start_timeout to wait it out;"
                                 r" kubernetes:///default/kv:grpc cannot be discovered until it answers"):
            resolver.start(lambda endpoints: None, deadline=time.monotonic() + 1.5)
    finally:
        resolver.close()
    assert time.monotonic() - began < MARGIN


@pytest.mark.timeout(120)
def test_a_kill_whose_delete_is_throttled_says_the_api_answered(server: StandIn) -> None:
    """kill() of a running pod whose delete the API throttles: its error names the 429 and says the pod may
    still run; once the API answers again, the pod goes."""
    import sys

    from plugbay.runners.base import LaunchSpec
    from plugbay.runners.kubernetes import KubernetesRunner

    program = "import time\nprint('1|1|tcp|127.0.0.1:4000|grpc', flush=True)\ntime.sleep(60)\n"
    runner = KubernetesRunner("no-engine/x:1", kubeconfig=server.kubeconfig_path,
                              command=[sys.executable, "-c", program], start_timeout=20, api_timeout=2)
    runner.start(LaunchSpec(env={}))
    try:
        server.throttle("delete", "pods", retry_after=30)
        with pytest.raises(EngineUnavailableError,
                           match=rf"answered delete pods \(default/{runner.pod_name}\) 429 \(throttled: .*\), asking"
                                 r" to be asked again in 30s; the call's limit of 2s ran out while it waited\..*"
                                 r" The pod may still run"):
            runner.kill(0)
    finally:
        server.allow_all()
        runner.force_kill()
    assert server.store.get("default", runner.pod_name) is None
