"""An API answer of 200/201 whose body is JSON null, or an object with a list field holding no list (the
kubernetes client raises TypeError reading it), fails start(), kill(), attach() and sweep() with a typed
RunnerError saying the answer is no Kubernetes object, as any other body that is none does
(test_kube_api_badanswer.py).

The misbehaving servers are real sockets on 127.0.0.1; no pod is made anywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from plugbay.errors import RunnerError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.kubernetes import KubernetesRunner, sweep
from tests.test_kube_api_timeouts import given_client, kubeconfig_for
from tests.test_kube_portforward_upgrade import RawServer, raw_serving

pytestmark = pytest.mark.kubernetes
POD_BODIES = {"null": (b"null", r"JSON null"),
              "list-field-not-list": (b'{"spec": {"containers": 3}}', r"TypeError: 'int' object is not iterable"),
              "status-list-not-list": (b'{"metadata": {"uid": "u"}, "status": {"containerStatuses": 7}}',
                                       r"TypeError: 'int' object is not iterable")}
LIST_BODIES = {"null": (b"null", r"JSON null"),
               "item-list-field-not-list": (b'{"items": [{"spec": {"containers": 3}}]}',
                                            r"TypeError: 'int' object is not iterable")}
REATTACH = {"kind": "KubernetesRunner", "namespace": "default", "pod": "plugbay-img-1", "image": "img",
            "container_port": 4000, "address_mode": "port-forward"}


def answering(body: bytes) -> Iterator[RawServer]:
    yield from raw_serving(lambda head: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                           b"Content-Length: %d\r\n\r\n" % len(body) + body)


@pytest.fixture(params=list(POD_BODIES))
def pod_answer(request: pytest.FixtureRequest) -> Iterator[tuple[RawServer, str]]:
    body, said = POD_BODIES[request.param]
    for server in answering(body):
        yield server, said


@pytest.fixture(params=list(LIST_BODIES))
def list_answer(request: pytest.FixtureRequest) -> Iterator[tuple[RawServer, str]]:
    body, said = LIST_BODIES[request.param]
    for server in answering(body):
        yield server, said


@pytest.mark.timeout(120)
def test_start_and_kill_fail_typed_on_a_null_or_mistyped_answer(pod_answer: tuple[RawServer, str],
                                                                tmp_path: Path) -> None:
    server, said = pod_answer
    url = f"http://127.0.0.1:{server.port}"
    runner = KubernetesRunner("img", kubeconfig=kubeconfig_for(url, tmp_path / "kubeconfig"), start_timeout=5,
                              api_timeout=2)
    with pytest.raises(RunnerError, match=rf"the Kubernetes API at {url} answered create pods with something that"
                                          rf" is not a Kubernetes object \({said}\)\. Check that the kubeconfig's"
                                          " server URL points at the API server itself, not at a proxy or a web"
                                          " page. Pod default/plugbay-img-.* may exist all the same"):
        runner.start(LaunchSpec(env={}))
    # a delete answered so is no word that the pod is going: the runner says it may still run
    with pytest.raises(RunnerError, match=rf"answered delete pods \(default/{runner.pod_name}\) with something that"
                                          rf" is not a Kubernetes object \({said}\).*The pod may still run: check"
                                          f" with kubectl get pod -n default {runner.pod_name}"):
        runner.kill(0)


@pytest.mark.timeout(120)
def test_attach_fails_typed_on_a_null_or_mistyped_pod(pod_answer: tuple[RawServer, str]) -> None:
    server, said = pod_answer
    url = f"http://127.0.0.1:{server.port}"
    api_client = given_client(url)
    try:
        with pytest.raises(RunnerError, match=rf"at {url} answered get pods with something that is not a"
                                              rf" Kubernetes object \({said}\)"):
            KubernetesRunner.attach(REATTACH, api_client=api_client, start_timeout=5, api_timeout=2)
    finally:
        api_client.close()


@pytest.mark.timeout(120)
def test_sweep_fails_typed_on_a_null_or_mistyped_list(list_answer: tuple[RawServer, str]) -> None:
    server, said = list_answer
    url = f"http://127.0.0.1:{server.port}"
    api_client = given_client(url)
    try:
        with pytest.raises(RunnerError, match=rf"at {url} answered list pods with something that is not a"
                                              rf" Kubernetes object \({said}\)"):
            sweep("default", api_client=api_client, api_timeout=2)
    finally:
        api_client.close()
