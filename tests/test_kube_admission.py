"""A 403 on the pod's create that is an admission refusal (ResourceQuota, LimitRange, PodSecurity) is told
apart from missing RBAC rules: the authorizer's 403 says "cannot <verb> resource", an admission's does not,
and no Role rule would help it, so it is a ConfigError led by the server's message, saying what to change."""

from __future__ import annotations

import pytest

from plugbay.errors import ConfigError, PermissionDeniedError
from plugbay.runners.base import LaunchSpec
from plugbay.runners.kubernetes import KubernetesRunner
from plugbay.runners.kubernetes.rbac import forbidden
from tests.kube_standin.fixtures import kubeconfig, standin  # noqa: F401
from tests.kube_standin.server import StandIn

pytestmark = pytest.mark.kubernetes
SPEC = LaunchSpec(env={})
QUOTA = ('pods "x" is forbidden: failed quota: compute: must specify limits.cpu for: plugin;'
         ' limits.memory for: plugin')
LIMITRANGE = 'pods "x" is forbidden: maximum cpu usage per Container is 1, but limit is 2'
PSA = 'pods "x" is forbidden: violates PodSecurity "restricted:latest": runAsNonRoot != true'


def refused(standin: StandIn, kubeconfig: str, message: str) -> BaseException:  # noqa: F811
    standin.refuse("create", "pods", message)
    runner = KubernetesRunner("example.com/kv:1", kubeconfig=kubeconfig)
    try:
        with pytest.raises((ConfigError, PermissionDeniedError)) as info:
            runner.start(SPEC)
    finally:
        runner.kill(0)
    assert standin.store.pods == {}  # nothing was made
    return info.value


@pytest.mark.parametrize("message", [QUOTA, LIMITRANGE])
def test_quota_or_limitrange_refusal_names_resources(standin: StandIn, kubeconfig: str,  # noqa: F811
                                                     message: str) -> None:
    error = refused(standin, kubeconfig, message)
    text = str(error)
    assert type(error) is ConfigError, text
    assert text.startswith(message)  # the server's reason first
    assert "not for missing RBAC rules" in text and "needs a Role" not in text
    assert "KubernetesRunner resources=" in text and "LimitRange" in text


def test_pod_security_refusal_names_security_context(standin: StandIn, kubeconfig: str) -> None:  # noqa: F811
    error = refused(standin, kubeconfig, PSA)
    text = str(error)
    assert type(error) is ConfigError, text
    assert text.startswith(PSA)
    assert "securityContext" in text and "pod_template=" in text and "needs a Role" not in text


def test_rbac_refusal_still_names_the_role(standin: StandIn, kubeconfig: str) -> None:  # noqa: F811
    standin.deny("create", "pods")
    runner = KubernetesRunner("example.com/kv:1", kubeconfig=kubeconfig)
    try:
        with pytest.raises(PermissionDeniedError) as info:
            runner.start(SPEC)
    finally:
        runner.kill(0)
    text = str(info.value)
    assert "needs a Role" in text
    assert "list. Server said: pods" in text and "cannot create resource" in text  # one sentence per sentence


IMPERSONATE = ('users "alice" is forbidden: User "bob" cannot impersonate resource "users" in API group ""'
               ' at the cluster scope')


def test_impersonation_refusal_is_the_authorizer(standin: StandIn, kubeconfig: str) -> None:  # noqa: F811
    # The authorizer names whatever verb it refused: a kubeconfig's as: user the host may not act as.
    error = refused(standin, kubeconfig, IMPERSONATE)
    assert type(error) is PermissionDeniedError, str(error)
    assert "cannot impersonate resource" in str(error)


def test_missing_service_account_names_the_option(standin: StandIn, kubeconfig: str) -> None:  # noqa: F811
    message = ('pods "x" is forbidden: error looking up service account plugins/plugbay-plugin:'
               ' serviceaccount "plugbay-plugin" not found')
    error = refused(standin, kubeconfig, message)
    assert type(error) is ConfigError and "service_account=" in str(error), str(error)


def test_webhook_refusing_another_call_is_no_pod_advice() -> None:
    # Only the pod's create can be changed by the runner's pod options; a webhook refusing a delete cannot.
    hook = 'admission webhook "protect.example.com" denied the request: pods with label keep=true may not be deleted'
    error = forbidden("delete", "pods", "plugins", hook)
    text = str(error)
    assert type(error) is PermissionDeniedError, text
    assert hook in text and "resources=" not in text and "pod_template=" not in text
