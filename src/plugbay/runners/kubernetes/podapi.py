"""The Kubernetes runner's API calls on its one pod, each bounded in time.

One-shot calls (create, read, delete, the events list, a log tail) pass
``_request_timeout = (api_timeout, api_timeout)``: connect, then each read of
the answer, and the whole call ends within ``api_timeout`` too (deadline.py):
a server trickling its answer cannot hold it. The log stream that follows the
plugin (follow=true) has the same bound until the response's head (in total),
and none after it: a plugin
may print nothing for hours, and that silence must not end its log. The socket
gets TCP keepalive instead, so a peer that vanished (host down, network cut)
still ends the stream; closing the runner shuts the socket down. The calls of a
start() under a Client have api_timeout or what is left of the Client's
start_timeout, whichever is less (budget.py).
"""

from __future__ import annotations

import math
import socket
from typing import Any

from plugbay.errors import ConfigError, EngineUnavailableError, PermissionDeniedError, RunnerError
from plugbay.runners.kubernetes import pods
from plugbay.runners.kubernetes.budget import StartBudget
from plugbay.runners.kubernetes.api import (UNREADABLE, api_message, call, not_an_object, not_found, request_timeout,
                                            late_message, timed_out, used_up_message, within_deadline)
from plugbay.runners.kubernetes.rbac import denied_message

_KEEPALIVE = (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4))
# create answers that say the pod was not stored: any other (5xx, 429) leaves it unknown
REFUSED = frozenset({400, 401, 403, 404, 409, 422})


class PodGone(RunnerError):
    """The API server's word that the runner's pod is gone: its log is at its end, not to be reopened."""


class PodApi:
    """``pod_name`` and ``uid`` are the runner's pod; ``timeout`` is its api_timeout."""

    def __init__(self, api_client: Any, namespace: str, timeout: float) -> None:
        from kubernetes import client

        self.client = api_client
        self.api: Any = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.timeout = timeout
        self.pod_name = ""
        self.uid = ""  # the pod's UID once created or attached: delete() deletes only that pod

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.pod_name}"

    def call(self, verb: str, resource: str, func: Any, *args: Any, timeout: float | None = None,
             **kwargs: Any) -> Any:
        """One call, bounded by ``timeout`` (None: the runner's api_timeout)."""
        return call(self.client, self.namespace, verb, resource, func, *args,
                    _request_timeout=request_timeout(self.timeout if timeout is None else timeout), **kwargs)

    def within(self, budget: StartBudget | None, what: str, verb: str, resource: str, func: Any, *args: Any,
               fate: str = "the pod it made is deleted", **kwargs: Any) -> Any:
        """One call of a start() (budget.py: ``what`` names it if the Client's deadline cuts it), or with
        the runner's api_timeout alone when there is no budget (not start()'s thread, or no Client)."""
        if budget is None:
            return self.call(verb, resource, func, *args, **kwargs)
        return budget.call(lambda bound: self.call(verb, resource, func, *args, timeout=bound, **kwargs), what, fate)

    def create(self, body: Any, budget: StartBudget | None = None) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            created = self.within(budget, "create the pod", "create", "pods", self.api.create_namespaced_pod,
                                  self.namespace, body, fate=f"pod {self.id} may exist all the same: the runner's"
                                  " kill() deletes it by name, or plugbay's sweep does later")
        except EngineUnavailableError as exc:  # the server may have made it and lost only the answer
            raise EngineUnavailableError(self._may_exist(exc)) from exc.__cause__
        except (RunnerError, ConfigError) as exc:  # ConfigError: a 403 from admission (rbac.forbidden)
            if isinstance(exc.__cause__, ApiException) and exc.__cause__.status in REFUSED:
                # refused before it was stored: no pod of ours has this name, so a kill() must not
                # delete it by name, it may be another runner's
                self.pod_name = ""
                raise
            # a 5xx (504 "may still be processing", 500), a 429 or a 200 with no object: the create may
            # have been stored and only its answer lost, so the name is kept for kill() to delete
            raise RunnerError(self._may_exist(exc)) from exc.__cause__
        self.uid = str(getattr(created.metadata, "uid", "") or "")

    def _may_exist(self, exc: BaseException) -> str:
        # its own sentence ends with a full stop, which read ".." before "Pod"
        return (f"{str(exc).rstrip('.')}. Pod {self.id} may exist all the same: the runner's kill() deletes it by"
                " name, or plugbay's sweep does later")

    def read_pod(self, budget: StartBudget | None = None, timeout: float | None = None) -> dict[str, Any] | None:
        """The pod under the runner's name; None when the API server says it has none (its NotFound Status).
        Any other failure, a 404 without that Status too (a proxy's page), is a RunnerError: a failed read.
        ``budget``: a read of start()'s (see :meth:`within`); ``timeout``: another bound than api_timeout."""
        try:
            if budget is not None:
                obj = self.within(budget, "read the pod", "get", "pods", self.api.read_namespaced_pod,
                                  self.pod_name, self.namespace)
            else:
                obj = self.call("get", "pods", self.api.read_namespaced_pod, self.pod_name, self.namespace,
                                timeout=timeout)
        except RunnerError as exc:
            if not_found(exc.__cause__, "pods", self.pod_name):
                return None
            raise
        return dict(self.client.sanitize_for_serialization(obj))

    def events(self, timeout: float | None = None) -> list[str]:
        try:
            found = self.call("list", "events", self.api.list_namespaced_event, self.namespace,
                              field_selector=f"involvedObject.name={self.pod_name}", timeout=timeout)
        except RunnerError as exc:
            return [f"(events unavailable: {exc})"]
        items = [self.client.sanitize_for_serialization(e) for e in found.items]
        items.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
        return [pods.format_event(e) for e in items]

    def logs_tail(self, timeout: float | None = None) -> list[str]:
        try:
            text = self.call("get", "pods/log", self.api.read_namespaced_pod_log, self.pod_name, self.namespace,
                             container=pods.CONTAINER_NAME, tail_lines=20, timeout=timeout)
            return str(text).splitlines()
        except (RunnerError, ValueError):
            return []

    def open_log(self, since_seconds: int | None, first: bool = False, budget: StartBudget | None = None) -> Any:
        """The plugin's log, followed, each line stamped (logs.PodLogs takes the stamps off): bounded until
        the answer's head, unbounded after it. ``since_seconds``: from that long ago on (a reopen).
        PodGone when the API server says the pod is gone (the log's NotFound, or a read after the open that
        does not find its UID under its name); RunnerError when (``first`` False: a reopen) that read fails.
        ``budget``: start()'s (see :meth:`within`)."""
        since: dict[str, Any] = {"since_seconds": since_seconds} if since_seconds is not None else {}
        try:
            resp = self.within(budget, "open the pod's log", "get", "pods/log", self.api.read_namespaced_pod_log,
                               self.pod_name, self.namespace, container=pods.CONTAINER_NAME, follow=True,
                               timestamps=True, _preload_content=False, **since)
        except RunnerError as exc:
            if not_found(exc.__cause__, "pods", self.pod_name):  # its NotFound Status: no pod has the name
                raise PodGone(str(exc)) from exc.__cause__
            raise
        quiet_ok(resp)
        if self.uid:
            # The log is asked for by name, and a pod that took the name once the runner's was deleted
            # would have its lines taken for the plugin's. A stream stays with the container it opened
            # on, and the runner's pod holds the name from its create to its deletion only: a read
            # after the open that still finds its UID proves the stream is the plugin's.
            try:
                pod = self.read_pod(budget)
            except RunnerError:
                if not first:
                    resp.close()
                    raise
                # The first open follows the watch seeing this UID Running an instant before: a read
                # failing then (a 500, a 429, a timeout) says nothing against the stream, and must not
                # fail a start that went well. A reopen has no such proof, so its failed read counts
                # as a failed reopen (logs.PodLogs tries again).
                return resp
            except BaseException:
                resp.close()
                raise
            if pod is None or (pod.get("metadata") or {}).get("uid") != self.uid:
                resp.close()
                raise PodGone(f"pod {self.id} is gone (deleted, or its name is another pod's now):"
                              " its log is not followed")
        return resp

    def delete(self, grace: float) -> bool:
        """Delete the pod (only the one with our UID); False when it was already gone (the API server's
        NotFound: a 404 without it, a proxy's page, proves nothing and is a RunnerError).

        Every failure is a typed error saying the pod may still run; the caller still closes up.
        """
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        # Only the pod this runner created or attached to (its UID): a pod that took its name since is left.
        body = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=self.uid)) if self.uid else None
        timeout = request_timeout(self.timeout)
        try:
            # 0 would force-delete the object before the kubelet stopped the container; 1 s keeps that confirmation
            answer = within_deadline(self.client, self.api.delete_namespaced_pod, self.pod_name, self.namespace,
                                     grace_period_seconds=max(1, math.ceil(grace)), body=body,
                                     _request_timeout=timeout)
            if answer is None:  # a 200 whose body is JSON null: no word that the pod is being deleted
                raise RunnerError(self._unread_delete(None))
            return True
        except ApiException as exc:
            if not_found(exc, "pods", self.pod_name):
                return False
            if exc.status == 403:
                raise PermissionDeniedError(denied_message("delete", "pods", self.namespace)) from exc
            if exc.status == 409:  # the UID precondition failed: the name is another pod's now
                raise RunnerError(
                    f"pod {self.id} is no longer the pod plugbay started (its UID is not {self.uid});"
                    " plugbay left it alone. If it is yours, delete it with kubectl delete pod") from exc
            raise RunnerError(f"deleting pod {self.id} failed: {exc.status} {api_message(exc)}") from exc
        except UNREADABLE as exc:  # the delete was answered 200, with a body that is no object
            raise RunnerError(self._unread_delete(exc)) from exc
        except (HTTPError, OSError) as exc:
            host = getattr(self.client.configuration, "host", "?")
            why = late_message(host, f"delete pods ({self.id})", exc, timeout) if timed_out(exc) else (
                used_up_message(host, f"delete pods ({self.id})", exc) or
                f"cannot reach the Kubernetes API at {host} to delete pod {self.id}: {exc}")
            raise EngineUnavailableError(
                f"{why}. The pod may still run: delete it with kubectl delete pod -n {self.namespace}"
                f" {self.pod_name} once the API answers (or run plugbay's sweep)") from exc

    def _unread_delete(self, exc: BaseException | None) -> str:
        return (f"{not_an_object(self.client, f'delete pods ({self.id})', exc)}. The pod may still run: check"
                f" with kubectl get pod -n {self.namespace} {self.pod_name}")


def quiet_ok(resp: Any) -> None:
    """Lift the read timeout off a streamed response whose head arrived, and keep TCP keepalive on it."""
    sock = getattr(getattr(resp, "connection", None), "sock", None)
    if sock is None:
        return
    sock.settimeout(None)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in _KEEPALIVE:
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except OSError:
        pass  # keepalive is a help, not a need: the stream still ends when the runner closes it
