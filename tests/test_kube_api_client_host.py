"""A caller-built api_client= whose host is no API server's URL (another scheme, no scheme, no host, a port out of
range) is a ConfigError as it is passed (KubernetesRunner, its attach, sweep(), EndpointSliceResolver), saying
what is wrong and how to build it, as a kubeconfig's server is refused as it is loaded: not a RunnerError at the
first call about an answer that is "not a Kubernetes object". Nothing is sent anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from plugbay.errors import ConfigError
from plugbay.network.kubernetes import EndpointSliceResolver
from plugbay.runners.kubernetes import KubernetesRunner, sweep

pytestmark = [pytest.mark.kubernetes, pytest.mark.timeout(60)]

BAD_HOSTS = ["ftp://x", "localhost:1", "", "https://api .example", "https://127.0.0.1:99999", "http://"]
REATTACH = {"kind": "KubernetesRunner", "namespace": "default", "pod": "plugbay-kv-1", "image": "img"}

TAKERS: dict[str, tuple[str, Callable[[Any], object]]] = {
    "runner": ("KubernetesRunner", lambda c: KubernetesRunner("img", namespace="default", api_client=c)),
    "attach": ("KubernetesRunner", lambda c: KubernetesRunner.attach(REATTACH, api_client=c, api_timeout=2)),
    "sweep": ("sweep()", lambda c: sweep("default", api_client=c, api_timeout=2)),
    "slices": ("EndpointSliceResolver", lambda c: EndpointSliceResolver("default", "kv", 4000, api_client=c)),
}


def api_client(host: str) -> Any:
    cfg = client.Configuration()
    cfg.host = host
    return client.ApiClient(cfg)


@pytest.mark.parametrize("taker", list(TAKERS))
@pytest.mark.parametrize("host", BAD_HOSTS)
def test_a_caller_built_client_with_a_bad_host_is_refused_as_passed(host: str, taker: str) -> None:
    where, take = TAKERS[taker]
    made = api_client(host)
    try:
        with pytest.raises(ConfigError, match=(
                rf"^the Kubernetes API address {re.escape(repr(host))} is not an http\(s\) URL \(the host of the"
                rf" api_client= passed to {re.escape(where)}\); build the ApiClient from a Configuration whose"
                r" host is the API server's URL, e\.g\. https://203\.0\.113\.10:6443 .*, or pass kubeconfig="
                " instead$")):
            take(made)
    finally:
        made.close()


def test_a_caller_built_client_with_a_good_host_is_taken() -> None:
    made = api_client("http://127.0.0.1:9")  # nothing listens: nothing is called here
    try:
        runner = KubernetesRunner("img", namespace="default", api_client=made)
        assert runner.namespace == "default"
        resolver = EndpointSliceResolver("default", "kv", 4000, api_client=made)
        resolver.close()
    finally:
        made.close()
