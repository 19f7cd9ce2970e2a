"""Kubernetes API access for the pod runner: loading the client configuration, error text."""

from __future__ import annotations

import json
import os
from typing import Any

from plugbay.errors import EngineUnavailableError, PermissionDeniedError, RunnerError
from plugbay.runners.kubernetes.rbac import denied_message

SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(SA_TOKEN)


def load_api_client(kubeconfig: str | None = None, context: str | None = None) -> tuple[Any, bool]:
    """(ApiClient, loaded from the in-cluster service account?)."""
    from kubernetes import client
    from kubernetes import config as config_mod

    config: Any = config_mod
    try:
        if kubeconfig is None and in_cluster():
            cfg = client.Configuration()
            config.load_incluster_config(client_configuration=cfg)
            return client.ApiClient(cfg), True
        return config.new_client_from_config(config_file=kubeconfig, context=context), False
    except (config_mod.ConfigException, OSError) as exc:
        raise EngineUnavailableError(
            f"no usable Kubernetes configuration ({exc}). Pass kubeconfig= or api_client=, set"
            " KUBECONFIG, or run the host in a pod with a service account.") from exc


def default_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The namespace of the pod's service account in-cluster, else of the kubeconfig context."""
    if in_cluster():
        try:
            with open(os.path.join(os.path.dirname(SA_TOKEN), "namespace")) as f:
                return f.read().strip() or "default"
        except OSError:
            pass
    try:
        from kubernetes import config as config_mod

        config: Any = config_mod
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
        ctx = active if context is None else next((c for c in contexts if c.get("name") == context), None)
        return str(((ctx or {}).get("context") or {}).get("namespace") or "default")
    except Exception:
        return "default"


def api_message(exc: Any) -> str:
    """The message of a Kubernetes Status body, else the HTTP reason."""
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except Exception:
        return str(exc.reason)


def call(api_client: Any, namespace: str, verb: str, resource: str, func: Any, *args: Any, **kwargs: Any) -> Any:
    """``func(*args, **kwargs)`` against the API, its failures turned into plugbay's typed errors."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return func(*args, **kwargs)
    except ApiException as exc:
        if exc.status == 403:
            raise PermissionDeniedError(denied_message(verb, resource, namespace)
                                        + f" Server said: {api_message(exc)}") from exc
        if exc.status == 401:
            raise PermissionDeniedError(
                f"the Kubernetes API rejected the host's credentials (401) on {verb} {resource};"
                " refresh the kubeconfig's token or certificate") from exc
        raise RunnerError(f"Kubernetes API {verb} {resource} in {namespace!r} failed:"
                          f" {exc.status} {api_message(exc)}") from exc
    except (HTTPError, OSError) as exc:
        host = getattr(api_client.configuration, "host", "?")
        raise EngineUnavailableError(f"cannot reach the Kubernetes API at {host}: {exc}. Check that"
                                     " the cluster is up and the kubeconfig points at it.") from exc
