"""KubernetesRunner's names of Kubernetes objects (namespace, service account, label keys) are checked
against the API server's rules when the runner is made: a ConfigError naming the option, not a pod
create the API refuses at start() (namespace="Bad_NS" was taken, then failed there)."""

from __future__ import annotations

from typing import Any

import pytest

from plugbay.errors import ConfigError
from plugbay.runners.kubernetes import KubernetesRunner


class _Api:
    """An api_client stand-in: the constructor's checks come before any call on it."""


def _runner(**kw: Any) -> KubernetesRunner:
    return KubernetesRunner("plugbay-kv:latest", **{"namespace": "plugins", "api_client": _Api(), **kw})


@pytest.mark.parametrize("namespace", ["Bad_NS", "Plugins", "-plugins", "plugins-", "a.b", "a" * 64, "ns/x",
                                       "plügins", " plugins"])
def test_a_namespace_kubernetes_would_refuse(namespace: str) -> None:
    with pytest.raises(ConfigError, match=r"KubernetesRunner namespace must be a Kubernetes namespace name: at most"
                                          r" 63 lowercase letters, digits and '-', .*; pass e.g. namespace='plugins'"):
        _runner(namespace=namespace)


@pytest.mark.parametrize("namespace", ["", "Bad_NS", 3])
def test_sweep_refuses_a_namespace_as_the_runner_does(namespace: Any) -> None:
    # sweep("") asked the API for no namespace's pods; the check comes before any client is loaded
    from plugbay.runners.kubernetes import sweep

    with pytest.raises(ConfigError, match=r"^sweep\(\) namespace must be a"):
        sweep(namespace, kubeconfig="/nonexistent/kubeconfig")


@pytest.mark.parametrize("account", ["Plugbay", "plugbay_plugin", "-a", "a..b", "a/b", "a" * 254])
def test_a_service_account_kubernetes_would_refuse(account: str) -> None:
    with pytest.raises(ConfigError, match=r"KubernetesRunner service_account must be a Kubernetes ServiceAccount"
                                          r" name: .*; pass e.g. service_account='plugbay-plugin'"):
        _runner(service_account=account)


@pytest.mark.parametrize("key", ["", "team!", "-team", "team-", "a/b/c", "/team", "Bad_Prefix.io/team",
                                 "example.com/", "t" * 64, "te am"])
def test_a_label_key_kubernetes_would_refuse(key: str) -> None:
    with pytest.raises(ConfigError, match=r"KubernetesRunner labels has the key .*, which is no Kubernetes label"
                                          r" key"):
        _runner(labels={key: "x"})


def test_the_names_kubernetes_takes() -> None:
    for namespace in ("plugins", "a", "0", "kube-system", "a" * 63, "123-abc"):
        assert _runner(namespace=namespace).namespace == namespace
    for account in ("plugbay-plugin", "a.b.c", "a" * 253):
        assert _runner(service_account=account)._opts["service_account"] == account
    labels = {"team": "Any value: made valid", "app.kubernetes.io/name": "kv", "Team_2.x": "", "a" * 63: "v",
              "example.com/" + "b" * 63: "v"}
    assert _runner(labels=labels)._opts["labels"] == labels
