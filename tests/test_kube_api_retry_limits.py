"""A bounded Kubernetes API call stays bounded, and says what the API answered, whatever the client retries.

- The kubernetes client's own retry mode (``Configuration.client_go_retries``, off by default) sleeps each
  Retry-After with time.sleep outside urllib3: without the fix a call bounded to 1 s waited out the
  server's 30 s, said the API "did not answer", and a Cancel did not end the wait.
- A user's Retry with a huge ``retry_after_max`` (and that mode, which caps nothing) met an enormous
  Retry-After with a raw OverflowError (no wait that long is possible), out of plugbay's typed errors.
- A user's Retry whose status retries (status_forcelist) ran out raised MaxRetryError, which plugbay said
  as "cannot reach the Kubernetes API" although the API answered each time.

The stand-in answers 429 with Retry-After (its throttle knob) or 500 (its fail knob). The time checks are
bounds (the call must not wait the 30 s out), with margin, not speed.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("kubernetes")

from kubernetes import client, config  # noqa: E402
from urllib3.util.retry import Retry  # noqa: E402

from plugbay.errors import DiscoveryUnavailableError, EngineUnavailableError, RunnerError  # noqa: E402
from plugbay.runners.kubernetes import sweep  # noqa: E402
from tests.kube_standin.fixtures import server  # noqa: E402, F401 - the test's own stand-in
from tests.kube_throttled_list import cancel_while_it_waits, ends_with_its_bound  # noqa: E402
from tests.kube_standin.server import DROP, StandIn  # noqa: E402

pytestmark = pytest.mark.kubernetes
LIST = ("list", "pods")
MARGIN = 8.0  # seconds: far under the 30 s the server asks for, far over the 1 s bound
ENORMOUS = 10**20  # seconds of Retry-After: past what any wait (Event.wait, time.sleep) accepts
PAST_FLOAT = 10**400  # seconds of Retry-After: past what a float holds (int -> float: OverflowError)


def _api_client(server: StandIn, retries: Any = None, client_go: bool = False, backoff: Any = None) -> Any:
    cfg = type.__call__(client.Configuration)  # not a copy of the process-wide default
    config.load_kube_config(config_file=server.kubeconfig_path, client_configuration=cfg)
    cfg.retries = retries
    cfg.client_go_retries = client_go
    if backoff is not None:  # kubernetes.utils.Backoff: the mode's own wait between asks
        cfg.client_go_retry_backoff = backoff
    return client.ApiClient(cfg)


def _swept(api: Any, match: str | None, api_timeout: float = 1, error: type[Exception] = EngineUnavailableError
           ) -> str:
    """The message of sweep()'s ``error`` through ``api`` (closed after), matching ``match``."""
    try:
        with pytest.raises(error, match=match) as raised:
            sweep("default", api_client=api, api_timeout=api_timeout)
    finally:
        api.close()
    return str(raised.value)


@pytest.fixture
def client_go(server: StandIn) -> Iterator[Any]:
    """A user's ApiClient in the kubernetes client's client-go retry mode (its Retry-After waits its own)."""
    api = _api_client(server, client_go=True)
    try:
        yield api
    finally:
        api.close()


@pytest.mark.timeout(120)
def test_client_go_retries_end_a_retry_after_wait_with_the_deadline(server: StandIn, client_go: Any) -> None:
    ends_with_its_bound(server, client_go)


@pytest.mark.timeout(120)
def test_client_go_retries_still_ask_again_within_the_bound(server: StandIn, client_go: Any) -> None:
    """The mode as the client has it: a Retry-After within the call's bound (0 s here) is waited, and asked
    again (10 times, client-go's ceiling); the last 429 is the caller's answer."""
    server.throttle(*LIST, retry_after=0)
    with pytest.raises(RunnerError, match="429"):
        sweep("default", api_client=client_go, api_timeout=30)
    assert server.calls[LIST] == 11


def _in_client_go_wait(thread: threading.Thread) -> bool:
    """Whether ``thread`` is between asks in the client's Retry-After loop (not sending or reading one)."""
    frame = sys._current_frames().get(thread.ident or -1)
    names = []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return "on_retry_after_error" in names and "read_request" not in names


@pytest.mark.timeout(120)
def test_a_cancel_ends_a_client_go_retry_after_wait(server: StandIn, client_go: Any) -> None:
    def waiting(lister: threading.Thread) -> bool:
        until = time.monotonic() + 20
        while not _in_client_go_wait(lister) and time.monotonic() < until:
            time.sleep(0.02)
        return _in_client_go_wait(lister)

    cancel_while_it_waits(server, client_go, waiting, "plugbay-test-client-go-list")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["urllib3 Retry", "client-go"])
def test_an_enormous_retry_after_is_a_typed_error_saying_what_to_do(server: StandIn, mode: str) -> None:
    """A Retry whose retry_after_max lets 10**20 s through (client-go's mode caps nothing): the wait ends
    with the call's bound, and the error says no setting waits that out."""
    api = (_api_client(server, Retry(total=3, retry_after_max=10**30)) if mode == "urllib3 Retry"
           else _api_client(server, client_go=True))
    server.throttle(*LIST, retry_after=ENORMOUS)
    began = time.monotonic()
    said = _swept(api, r"answered list pods 429 \(throttled: .*\), asking to be asked again in 1e\+20s,"
                      r" longer than any call waits \(an API call's limit is at most 3600s\); the call's"
                      r" limit of 1s ran out while it waited\. Check the API server and any proxy in front"
                      r" of it")
    assert "api_timeout" not in said  # raising it cannot wait that out
    assert time.monotonic() - began < MARGIN
    assert server.calls[LIST] == 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("retries, answers", [(Retry(total=2, status_forcelist=[500]), 3),
                                              (Retry(total=None, status=1, status_forcelist=[500]), 2)])
def test_status_retries_used_up_say_the_api_answered(server: StandIn, retries: Any, answers: int) -> None:
    api = _api_client(server, retries)
    server.fail(*LIST)
    said = _swept(api, rf"at {server.url} answered list pods 500 {answers} times, a status the ApiClient's"
                      r" Retry asks again after, until its retries ran out: the API server is up but"
                      r" failing the request\. Check it", api_timeout=10)
    assert "cannot reach" not in said
    assert server.calls[LIST] == answers


@pytest.mark.timeout(120)
def test_a_discovery_list_whose_status_retries_ran_out_says_the_api_answered(server: StandIn) -> None:
    from plugbay.network.kubernetes import EndpointSliceResolver

    api = _api_client(server, Retry(total=2, status_forcelist=[500]))
    server.fail("list", "endpointslices")
    resolver = EndpointSliceResolver("default", "kv", "grpc", allow_loopback=True, api_client=api)
    try:
        with pytest.raises(DiscoveryUnavailableError,
                           match=r"answered list endpointslices 500 3 times, a status the ApiClient's Retry asks"
                                 r" again after, until its retries ran out.*; kubernetes:///default/kv:grpc cannot"
                                 r" be discovered until it answers"):
            resolver.start(lambda endpoints: None, deadline=time.monotonic() + 10)
    finally:
        resolver.close()
        api.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["urllib3 Retry", "client-go"])
@pytest.mark.parametrize("retry_after", [PAST_FLOAT, "9" * 5000, "0" * 4000 + "9" * 309],
                         ids=["past-float", "past-int-digits", "309-digits-past-float"])
def test_a_retry_after_past_any_float_is_the_typed_answered_error(server: StandIn, mode: str,
                                                                  retry_after: int | str) -> None:
    """A Retry-After of 10**400 s: printing it (round, :g) and client-go's own float(int(value)) overflowed,
    which read as "did not answer" (urllib3's Retry) or escaped as a raw OverflowError (client-go's mode);
    one of 5000 digits is a ValueError of int() (over 4300 digits), read as "not a Kubernetes object"."""
    api = (_api_client(server, Retry(total=3, retry_after_max=math.inf)) if mode == "urllib3 Retry"
           else _api_client(server, client_go=True))
    server.throttle(*LIST, retry_after=retry_after)
    _swept(api, r"answered list pods 429 \(throttled: .*\), asking to be asked again in more than"
              r" 1e\+308s, longer than any call waits .*the call's limit of 1s ran out while it"
              r" waited\. Check the API server and any proxy in front of it")
    assert server.calls[LIST] == 1


@pytest.mark.timeout(120)
def test_a_retry_after_of_1s_in_5000_digits_is_waited_and_asked_again(server: StandIn) -> None:
    """Leading zeros count toward int()'s 4300 digits, but the wait they write is 1 s: urllib3's Retry
    (through plugbay's reading) waits it and asks again."""
    api = _api_client(server, Retry(total=3))
    server.script(*LIST, (429, "0" * 5000 + "1"))
    try:
        sweep("default", api_client=api, api_timeout=10)
    finally:
        api.close()
    assert server.calls[LIST] == 2


def test_a_client_go_retry_after_in_5000_digits_says_the_mode_cannot_read_it(server: StandIn) -> None:
    """client-go's mode reads a Retry-After with int(): 5000 digits (a 1 s wait) are a ValueError it cannot
    get past, which read as "not a Kubernetes object"; now a typed error that names the mode."""
    server.script(*LIST, (429, "0" * 5000 + "1"))
    _swept(_api_client(server, client_go=True), r"answered 429 with a Retry-After of 1s written in 5001 digits,"
           r" which the kubernetes client's client-go retry mode cannot read", api_timeout=10)
    assert server.calls[LIST] == 1


@pytest.mark.timeout(120)
def test_client_go_retries_that_end_on_a_429_say_the_api_throttles(server: StandIn) -> None:
    """client-go's mode gives up after its backoff's steps and hands back the last 429: it read as a bare
    "failed: 429 Too Many Requests"."""
    from kubernetes.utils import Backoff

    api = _api_client(server, client_go=True, backoff=Backoff(steps=3, duration=0.01, factor=1.0))
    server.script(*LIST, (429, 0), (429, 0), (429, 0))
    _swept(api, r"failed: 429 .*; the API server is throttling the host \(API Priority and Fairness, or an"
                r" overloaded server\): retry later", api_timeout=10, error=RunnerError)
    assert server.calls[LIST] == 3


def _used_up(server: StandIn, retries: Any) -> str:
    """The message of a list whose ``retries`` the server's scripted answers use up."""
    said = _swept(_api_client(server, retries), None, api_timeout=10)
    assert "cannot reach the Kubernetes API" not in said
    return said


@pytest.mark.timeout(120)
def test_gateway_statuses_used_up_do_not_claim_the_api_server_is_up(server: StandIn) -> None:
    """A proxy or load balancer answers 502/503/504 for an API server it cannot reach."""
    server.script(*LIST, 502, 504, 503)
    said = _used_up(server, Retry(total=2, status_forcelist=[502, 503, 504], backoff_factor=0))
    assert "answered list pods 502, 504, 503 (3 times), statuses the ApiClient's Retry asks again after" in said
    assert "a proxy or load balancer in front of the API server may be answering for one it cannot reach" in said
    assert "is up" not in said
    assert server.calls[LIST] == 3


@pytest.mark.timeout(120)
def test_lost_connections_that_used_the_retry_up_are_counted(server: StandIn) -> None:
    server.script(*LIST, DROP, DROP, DROP, 500)
    said = _used_up(server, Retry(total=3, status_forcelist=[500], backoff_factor=0))
    assert ("answered list pods 500 1 time, and 3 connections were lost, a status the ApiClient's Retry asks"
            " again after, until its retries ran out") in said
    assert server.calls[LIST] == 4


@pytest.mark.timeout(120)
def test_mixed_statuses_used_up_get_the_verdict_of_all_of_them(server: StandIn) -> None:
    """Two 500s and a 429: the server is failing, not only throttling."""
    server.script(*LIST, 500, 500, (429, 0))
    said = _used_up(server, Retry(total=10, status=2, status_forcelist=[500], backoff_factor=0))
    assert "answered list pods 500, 500, 429 (3 times)" in said
    assert "the API server is up but failing the request" in said
    assert "throttling" not in said


@pytest.mark.timeout(120)
def test_a_client_go_backoff_cut_advises_the_setting_that_mode_uses(server: StandIn) -> None:
    """client-go's mode waits max(its client_go_retry_backoff, the Retry-After): an ApiClient Retry's
    backoff_factor plays no part in it."""
    from kubernetes.utils import Backoff

    api = _api_client(server, client_go=True, backoff=Backoff(steps=5, duration=30.0, factor=1.0))
    server.throttle(*LIST, retry_after=0)
    said = _swept(api, r"answered list pods 429, and the call's limit of 1s ran out during the client-go"
                      r" retry backoff of 30s before asking again\. Check the API server, or lower the"
                      r" duration \(or factor, cap\) of the ApiClient configuration's"
                      r" client_go_retry_backoff")
    assert "backoff_factor" not in said
    assert server.calls[LIST] == 1


def test_the_status_advice_is_for_throttling_and_outages_only() -> None:
    from plugbay.runners.kubernetes.advice import status_advice

    assert "retry later" in status_advice(429)
    for status in (500, 502, 503, 504):
        assert "kubectl get --raw /readyz" in status_advice(status)
    for status in (501, 505, 404, 409, None):  # a request the server does not support is no outage
        assert status_advice(status) == ""
