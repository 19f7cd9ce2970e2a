"""An API server (or a proxy or web page at the kubeconfig's URL) that answers 200 with a body that is no
Kubernetes object makes start() and kill() fail with a typed RunnerError, not a JSON or pydantic error.

The misbehaving servers are real sockets on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from plugbay.errors import PlugbayError, RunnerError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.kubernetes import KubernetesRunner, sweep
from tests.test_kube_api_timeouts import given_client, kubeconfig_for
from tests.test_kube_portforward_upgrade import RawServer, raw_serving

pytestmark = pytest.mark.kubernetes
BODIES = {"empty": b"", "html": b"<html>502 from the proxy</html>", "wrong-type": b'{"metadata": 5}'}


@pytest.fixture(params=list(BODIES))
def bad(request: pytest.FixtureRequest) -> Iterator[RawServer]:
    body = BODIES[request.param]
    yield from raw_serving(lambda head: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                           b"Content-Length: %d\r\n\r\n" % len(body) + body)


@pytest.mark.timeout(120)
def test_start_and_kill_fail_typed_on_an_answer_that_is_no_object(bad: RawServer, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{bad.port}"
    runner = KubernetesRunner("img", kubeconfig=kubeconfig_for(url, tmp_path / "kubeconfig"), start_timeout=5,
                              api_timeout=2)
    with pytest.raises(RunnerError, match=rf"the Kubernetes API at {url} answered create pods with something that"
                                          r" is not a Kubernetes object \((JSONDecodeError|ValidationError): .*\)\."
                                          " Check that the kubeconfig's server URL points at the API server itself,"
                                          " not at a proxy or a web page. Pod default/plugbay-img-.* may exist all"
                                          " the same"):
        runner.start(LaunchSpec(env={}))
    with pytest.raises(RunnerError, match=rf"answered delete pods \(default/{runner.pod_name}\) with something that"
                                          " is not a Kubernetes object.*The pod may still run: check with kubectl"
                                          f" get pod -n default {runner.pod_name}"):
        runner.kill(0)


@pytest.mark.timeout(120)
def test_sweep_fails_typed_on_an_answer_that_is_no_object(bad: RawServer) -> None:
    url = f"http://127.0.0.1:{bad.port}"
    api_client = given_client(url)
    try:
        with pytest.raises(PlugbayError, match=f"at {url} answered list pods with something that is not a"
                                               " Kubernetes object"):
            sweep("default", api_client=api_client, api_timeout=2)
    finally:
        api_client.close()
