"""A pod or namespace name from (untrusted) reattach data goes into the API's request path, so it is
checked as Kubernetes names objects (a DNS-1123 subdomain, a label for a namespace) before any request:
".." or "a/../../secrets/x" would ask the API server for another path than the pod's."""

from __future__ import annotations

import pytest

from plugbay.errors import ReattachError, RunnerError
from plugbay.runners.kubernetes import KubernetesRunner
from tests.kube_standin.fixtures import kubeconfig, standin  # noqa: F401
from tests.kube_standin.server import StandIn

pytestmark = pytest.mark.kubernetes


def _data(**names: object) -> dict[str, object]:
    return {"kind": "KubernetesRunner", "namespace": "default", "pod": "plugbay-kv-123456", "image": "i",
            "container_port": 4000, "address_mode": "port-forward", "reattach_secret": "x" * 43, **names}


@pytest.mark.parametrize("pod", ["..", ".", "a/../../secrets/x", "P od", "UPPER", "-a", "a" * 254, "a..b"])
def test_an_invalid_pod_name_is_refused_before_any_request(standin: StandIn, kubeconfig: str,  # noqa: F811
                                                           pod: str) -> None:
    asked = len(standin.paths)  # the stand-in serves the module's tests
    with pytest.raises(ReattachError, match="no valid Kubernetes pod name"):
        KubernetesRunner.attach(_data(pod=pod), kubeconfig=kubeconfig)
    assert standin.paths[asked:] == []


@pytest.mark.parametrize("namespace", ["..", "a/b", "Default", "a.b"])
def test_an_invalid_namespace_is_refused_before_any_request(standin: StandIn, kubeconfig: str,  # noqa: F811
                                                            namespace: str) -> None:
    asked = len(standin.paths)
    with pytest.raises(ReattachError, match="no valid Kubernetes namespace name"):
        KubernetesRunner.attach(_data(namespace=namespace), kubeconfig=kubeconfig)
    assert standin.paths[asked:] == []


def test_a_valid_name_reaches_the_api(standin: StandIn, kubeconfig: str) -> None:  # noqa: F811
    name = "plugbay-kv-123456." + "a" * 200  # a dotted subdomain up to 253 characters is a pod name
    with pytest.raises(RunnerError, match="no longer exists"):  # the stand-in is asked, and has no such pod
        KubernetesRunner.attach(_data(pod=name), kubeconfig=kubeconfig)
    assert any(name in path for path in standin.paths)
