"""PodTeardown, a base of KubernetesRunner: how it deletes its pod and lets go of what it holds
(the watch, the log stream, the port-forwards, the API client).

The runner has no frozen() of its own (Runner.frozen(): False), as the Kubernetes API shows no frozen
pod: a pod has no paused state (no pause verb, unlike Docker's), and a container reads running whatever
its processes do, a SIGSTOPped one included. Telling would take an exec into the pod to read /proc,
which needs pods/exec (more than a plugin host's RBAC grants) and a shell in the image. So an unanswering
pod is deleted with the grace of a running one (docs/resilience.md, "Ending the plugin")."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from plugbay.errors import PermissionDeniedError, RunnerError
from plugbay.runners.kubernetes.api import close_client
from plugbay.runners.kubernetes.logs import PodLogs
from plugbay.runners.kubernetes.podapi import PodApi
from plugbay.runners.kubernetes.forwards import PortForwards
from plugbay.runners.kubernetes.watch import PodWatch

_log = logging.getLogger("plugbay.runners.kubernetes")
READ_EVERY = 1.0  # seconds of a deletion the watch says nothing of before the pod is read
GONE_WAIT = 30.0  # seconds past the grace period kill() waits for the deleted pod to go


class PodTeardown:
    """The pod's deletion and the runner's close up; KubernetesRunner sets the attributes."""

    _lock: threading.Lock
    _killed: bool
    _ended: bool
    _forwards: PortForwards
    _pod: PodApi
    _podwatch: PodWatch
    _logs: PodLogs
    _owns_client: bool
    _api_client: Any
    _client_closed = False  # a close up closed the API client (a later call may have opened a new pool)
    api_timeout: float

    if TYPE_CHECKING:  # KubernetesRunner's
        @property
        def pod_name(self) -> str: ...

        @property
        def id(self) -> str: ...

        def _read_pod(self, timeout: float | None = None) -> dict[str, Any] | None: ...

        def _start_watcher(self) -> None: ...

    def kill(self, grace: float = 2.0) -> None:
        """Delete the pod and close up; every API call bounded by api_timeout, the close up done regardless."""
        with self._lock:
            if self._killed:
                return
            self._killed = True
        self._delete_pod(grace)

    def force_kill(self) -> None:
        with self._lock:
            self._killed = True
        self._delete_pod(0)  # again if a kill() was cut short (Ctrl-C): the pod must not outlive the host

    def detach(self) -> None:
        """Leave the pod running; kill() afterwards still deletes it (the one with the UID this runner saw)."""
        self._close()

    def _delete_pod(self, grace: float) -> None:
        error: BaseException | None = None
        try:
            # Its log is not reopened from now on: the stream ends with the container, and a reopen would
            # only find the pod going (its NotFound, retried with backoffs, ended in a warning)
            self._logs.stop_reopening()
            # End our port-forward streams before the pod goes, so each closes from our side
            # in order rather than under the client's proxy threads when the pod's port vanishes.
            self._close_forwarders()
            # A pod seen gone is not deleted again: the watch takes it for gone only on the API server's word
            # (a DELETED event, a NotFound Status naming it, another UID under its name), and a delete sent
            # anyway made kill() fail, or wait out api_timeout, on a degraded API for a pod that is gone
            gone_before = self._podwatch.gone
            if self.pod_name and not gone_before:
                self._start_watcher()  # after detach() the watch stays closed: _await_gone reads instead
                try:
                    if not self._pod.delete(grace):
                        self._podwatch.update(None, True)  # the API server's NotFound: already gone
                except RunnerError as exc:
                    if getattr(exc.__cause__, "status", None) == 409:  # the name is another pod's now
                        self._podwatch.update(None, True)
                    error = exc
                if error is None and not self._await_gone(grace + GONE_WAIT):
                    # most often its node is gone (off, cut off): no kubelet confirms the deletion, ever
                    ns, name = self._pod.namespace, self.pod_name
                    _log.warning("pod %s still exists %.0fs after its deletion: its node may be gone or NotReady,"
                                 " and then no kubelet ever confirms it (kubectl get pod -n %s %s -o wide; kubectl"
                                 " get nodes). Once the node is known gone, remove the pod with kubectl delete pod"
                                 " -n %s %s --force --grace-period=0", self.id, grace + GONE_WAIT, ns, name, ns, name)
        finally:
            self._close()
        if error is not None:
            raise error

    def _await_gone(self, timeout: float) -> bool:
        """Whether the pod is gone within ``timeout``: told by the watch, else (detach() closed it,
        a 403 ended it) read every 0.25 s rather than sitting out the whole timeout. A working watch is
        read after too, each READ_EVERY it says nothing: a watch opened anew (every WATCH_SECONDS) lists
        the pod as it is, and one that began just after the pod went lists nothing, so its DELETED
        event, sent between two watches, is never seen: that cost kill() a whole watch."""
        deadline = time.monotonic() + timeout
        readable = True  # until RBAC says no: then only the watch can tell
        while (left := deadline - time.monotonic()) > 0:
            watching = self._podwatch.watching()
            if watching and self._podwatch.wait_gone(min(left, READ_EVERY)):
                return True
            if (left := deadline - time.monotonic()) <= 0:
                break
            try:
                if readable and self._read_pod(min(left, self.api_timeout)) is None:
                    self._podwatch.update(None, True)
                    return True
            except RunnerError as exc:
                readable = not isinstance(exc, PermissionDeniedError)
                _log.debug("reading pod %s after its deletion: %s", self.id, exc)
            if not watching:
                time.sleep(min(max(deadline - time.monotonic(), 0), 0.25))
        return self._podwatch.gone

    def _start_failed(self) -> None:
        """start() failed: kill(0), and close the API client again if a close up closed it already. A kill()
        from another thread may have closed it before start()'s last calls (the pod's delete after a kill
        during its create, a read): a call on a closed ApiClient opens a fresh pool, whose connection stayed
        open until the garbage collector ran. A kill() still under way is left alone: it closes the client
        last, and closing it under that kill's calls could fail them (urllib3's ClosedPoolError)."""
        try:
            self.kill(0)
        finally:
            with self._lock:
                if self._owns_client and self._client_closed:
                    close_client(self._api_client)

    def _close(self) -> None:
        self._podwatch.close()
        self._logs.close()
        self._close_forwarders()
        if self._owns_client:
            with self._lock:  # start()'s _start_failed sees the client closed, or closes it after this
                close_client(self._api_client)
                self._client_closed = True

    def _close_forwarders(self) -> None:
        with self._lock:
            self._ended = True
        self._forwards.close()
