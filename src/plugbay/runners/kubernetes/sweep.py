"""Sweeping plugbay pods whose host session is gone (label selector plugbay.managed=true)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from plugbay.errors import RunnerError
from plugbay.runners.session import (HOST_PIDS, MACHINE, MANAGED, SESSION, SESSION_START, host_session_id,
                                     session_gone, session_may_run)
from plugbay.runners.kubernetes.api import (DEFAULT_API_TIMEOUT, call, check_api_timeout, close_client, load_api_client,
                                            not_found, request_timeout, require_client)
from plugbay.runners.kubernetes.options import check_api_client, valid_namespace
from plugbay.runners.kubernetes.owner import HOST_ID, host_identity


def sweep(namespace: str = "default", live_sessions: Sequence[str] | None = None, *, api_client: Any = None,
          kubeconfig: str | None = None, grace: float = 0, dry_run: bool = False,
          host_id: str | None = None, api_timeout: float = DEFAULT_API_TIMEOUT, force: bool = False) -> list[str]:
    """Delete plugbay pods whose host session is gone; return their names.

    ``dry_run=True`` deletes nothing and returns the names it would delete.

    Each pod gets ``grace`` seconds (at least 1, as the runner's kill()) to stop. gracePeriodSeconds=0
    is the API's force delete: the object goes at once while its container may run on, unseen (kubectl
    sends 1 for 0 unless --force); ``force=True`` asks for that.

    With a host identity (``host_id``, else PLUGBAY_HOST_ID, else the host pod's
    POD_UID: see plugbay.runners.kubernetes.owner), the pods labelled with that
    identity by any other session are gone: an earlier run of this host left
    them (unless that session's process still runs on this machine: a forked
    worker of this host is a session of its own). Without ``live_sessions`` a
    session is also gone when its host process (from this machine, per the pod's
    plugbay.host annotation) no longer runs; pods of other machines are left
    alone. This process's own pods are never deleted.

    Each API call waits at most ``api_timeout`` seconds to connect and again for
    its answer; an API server that does not answer is an EngineUnavailableError.
    """
    valid_namespace(namespace, "sweep() namespace")  # "" would list no namespace's pods, or all of them
    require_client()
    from kubernetes import client

    timeout = request_timeout(check_api_timeout(api_timeout))
    own = api_client is None
    if api_client is None:
        api_client, _ = load_api_client(kubeconfig)
    else:
        check_api_client(api_client, "sweep()")
    api: Any = client.CoreV1Api(api_client)
    own_session = host_session_id()
    identity = host_identity(host_id)
    removed: list[str] = []
    seconds = 0 if force else max(1, math.ceil(grace))
    try:
        found = call(api_client, namespace, "list", "pods", api.list_namespaced_pod, namespace,
                            label_selector=f"{MANAGED}=true", _request_timeout=timeout)
        for pod in found.items:
            if not _swept(pod, namespace):
                continue
            labels = pod.metadata.labels
            session = labels[SESSION]
            if session == own_session:
                continue
            host = (pod.metadata.annotations or {}).get("plugbay.host")
            start, pids = labels.get(SESSION_START, ""), labels.get(HOST_PIDS)
            if identity is not None and labels.get(HOST_ID) == identity:
                # this host's identity, another session: a run before a restart, unless that session
                # may still run here (a forked worker of this host is a session of its own; a /proc of
                # another pid namespace cannot show it)
                gone = not session_may_run(host, pids, session, start)
            elif live_sessions is not None:
                gone = session not in live_sessions
            else:
                gone = session_gone(host, pids, session, start, labels.get(MACHINE))
            if gone and not pod.metadata.deletion_timestamp:
                if dry_run:
                    removed.append(pod.metadata.name)
                    continue
                if _delete_listed(api_client, api, namespace, pod, seconds, timeout):
                    removed.append(pod.metadata.name)
    finally:
        if own:
            close_client(api_client)
    return removed


def _swept(pod: Any, namespace: str) -> bool:
    """Whether a listed pod is one a sweep may judge: plugbay's (its own labels say plugbay.managed=true
    and name a session) and of ``namespace``. The list asked for those, but its answer is the API
    server's (or a proxy's): one that ignored the selector must not get someone else's pods deleted."""
    meta = getattr(pod, "metadata", None)
    labels = getattr(meta, "labels", None)
    if not isinstance(labels, dict) or labels.get(MANAGED) != "true":
        return False
    session = labels.get(SESSION)
    if not isinstance(session, str) or not session or not isinstance(getattr(meta, "name", None), str):
        return False
    return getattr(meta, "namespace", None) in (None, namespace)


def _delete_listed(api_client: Any, api: Any, namespace: str, pod: Any, grace: int, timeout: Any) -> bool:
    """Delete the pod the list saw (its UID as a precondition); False when it is gone or not it any more."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    # By name alone, a pod that took the name since the list (not plugbay's, maybe) would be deleted
    body = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=pod.metadata.uid)) \
        if pod.metadata.uid else None
    try:
        call(api_client, namespace, "delete", "pods", api.delete_namespaced_pod, pod.metadata.name, namespace,
             grace_period_seconds=grace, body=body, _request_timeout=timeout)
    except RunnerError as exc:
        cause = exc.__cause__
        # 409: the UID precondition failed, the name is another pod's now; 404: only the API server's own
        # NotFound naming the pod (a proxy's '404 page not found' deleted nothing: the pod may still run)
        if isinstance(cause, ApiException) and (cause.status == 409 or not_found(cause, "pods", pod.metadata.name)):
            return False
        raise
    return True
