"""The pod as the Kubernetes runner's watch sees it: its last state and whether it is gone.

A plugbay-kwatch-<pod> thread follows a watch on the one pod (field-selected,
re-opened every 10 s; a pod deleted between two watches is noticed by a read)
so start, wait and kill wake the moment the pod changes instead of polling.
Failed watches (connection blips, an API outage) are retried with a capped
backoff for as long as the runner is not closed: a watch that gave up would
never see the plugin's exit; from the READ_AFTER_FAILURES-th failure in a
row on, the pod is read before each retry, so its exit (or Running) is still
seen while only watches fail (500s, ERROR events, a proxy that breaks streamed
answers). A 403 is kept as a PermissionDeniedError for the starting thread to
raise; the thread then reads the pod every POLL_SECONDS instead (RBAC changed
under a running plugin: wait() must still see it end, not spin), and tries a
watch again after WATCH_AGAIN_AFTER seconds (RBAC may be restored).

Each watch asks the server to end it after WATCH_SECONDS (timeoutSeconds), so
a quiet pod costs one re-watch per period, not a cut stream. One the server
ends in under half that having changed nothing counts as a failed watch (backoff);
one that changed the pod is followed by REWATCH_PAUSE: no server answer makes
the loop re-watch (and read the pod) as fast as it hangs up. The client side
waits ``api_timeout`` to connect and for the answer's head (in total: a
server trickling the head cannot hold it, see deadline.py), then up to
WATCH_SECONDS + ``api_timeout`` between two reads of the stream: a server that
stops answering mid-watch is noticed, and the watch opened again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from plugbay.errors import PermissionDeniedError
from plugbay.runners.attached import UNKNOWN_EXIT_CODE
from plugbay.runners.kubernetes import pods
from plugbay.runners.kubernetes.api import (REWATCH_PAUSE, api_message, ended_early, no_change, request_timeout,
                                            watch_cut_short, within_deadline)
from plugbay.runners.kubernetes.deadline import Cancel, cancellable
from plugbay.runners.kubernetes.logs import shut_stream
from plugbay.runners.kubernetes.rbac import denied_message
from plugbay.runners.kubernetes.watchlines import BoundedLines

_log = logging.getLogger("plugbay.runners.kubernetes")
WATCH_SECONDS = 10  # the server ends each watch after this long; the loop opens the next
BACKOFF_STEP = 0.2  # the pause after n failed watches in a row: n steps, up to MAX_BACKOFF
MAX_BACKOFF = 2.0
POLL_SECONDS = 1.0  # after a 403 on the watch: how often the pod is read instead
WATCH_AGAIN_AFTER = 60.0  # and how long before the next try at a watch
FAILURES_WARNED = 30  # failed watches in a row before a warning (the watch keeps retrying until closed)
READ_AFTER_FAILURES = 3  # failed watches in a row (500s, ERROR events, a broken proxy) before each retry reads
_POD_EVENTS = ("ADDED", "MODIFIED", "DELETED")


class PodWatch:
    """The watched state of one pod; ``cond`` guards ``pod`` and ``gone`` and is notified on each change."""

    def __init__(self, api: Any, namespace: str, read_pod: Callable[[], dict[str, Any] | None],
                 api_timeout: float = 30.0) -> None:
        self._api = api
        self.api_timeout = api_timeout
        self.namespace = namespace
        self._read_pod = read_pod
        self.pod_name = ""
        self.uid = ""  # the runner's pod (once known): a pod of that name with another UID is not it
        self.cond = threading.Condition()
        self.pod: dict[str, Any] | None = None
        self.gone = False
        self.stop = threading.Event()
        self.error: BaseException | None = None  # why the watch ended for good (a 403)
        self.polling = False  # since that 403: the pod is read every POLL_SECONDS
        self._watch: Any = None
        # close() ends a watch at any point: its head still awaited (the Cancel), its stream being read
        # (``_resp`` shut), or its answer not yet taken (opened() sees ``stop`` under ``_lock``). The client's
        # Watch.stop() alone is lost before the stream's first response: stream() begins by clearing it
        self._cancel = Cancel()
        self._lock = threading.Lock()
        self._resp: Any = None
        self.failures = 0  # failed watches in a row (timeouts, blips): nonzero, the watch tells nothing now
        self.last_failure = ""  # why the last watch failed, for a start timeout's message
        self._thread: threading.Thread | None = None

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.pod_name}"

    def start(self, pod_name: str) -> None:
        if self._thread is None:
            self.pod_name = pod_name
            # daemon, as all the pod runner's threads: Python joins non-daemon threads before atexit,
            # so a host returning from main without kill() would hang and never delete its pods
            self._thread = threading.Thread(target=self._loop, name=f"plugbay-kwatch-{pod_name}", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        with cancellable(self._cancel):  # close() ends a read of the pod under way too, not only a watch's head
            self._watch_loop()

    def _watch_loop(self) -> None:
        from kubernetes import watch as watch_mod
        from kubernetes.client.exceptions import ApiException

        watch: Any = watch_mod

        self.failures = failures = 0
        expired = False  # the last watch ended 410: a second in a row is a failure (no hot loop)
        list_pods = self._bounded_list()
        while not self.stop.is_set() and not self.gone:
            w = watch.Watch()
            self._watch = w
            started, events, changes, read = time.monotonic(), 0, 0, False
            try:
                try:
                    for ev in w.stream(list_pods, self.namespace, field_selector=f"metadata.name={self.pod_name}",
                                       timeout_seconds=WATCH_SECONDS,
                                       _request_timeout=request_timeout(self.api_timeout)):
                        events += 1
                        self.polling = False
                        if ev["type"] in _POD_EVENTS:  # a BOOKMARK's object is no pod: only a resourceVersion
                            changes += self.update(ev["object"], ev["type"] == "DELETED")
                        if self.stop.is_set():
                            break
                finally:
                    with self._lock:  # closed by the stream: its connection may serve another call next
                        self._resp = None
                took = time.monotonic() - started
                if not watch_cut_short(changes, took, WATCH_SECONDS):
                    failures = 0
                    self.polling = False
                else:
                    failures += 1
                    self.last_failure = (f"the watch ended after {took:.1f}s with {no_change(events)},"
                                         f" long before its {WATCH_SECONDS}s")
                if not self.stop.is_set() and not self.gone:
                    pod, read = self._read_pod(), True
                    if pod is None or self.foreign(pod):
                        self.update(None, True)
            except ApiException as exc:
                if exc.status == 403:
                    if self.error is None:
                        _log.warning("watching pod %s is forbidden; reading it every %.0fs instead", self.id,
                                     POLL_SECONDS)
                    self.error = PermissionDeniedError(denied_message("watch", "pods", self.namespace))
                    with self.cond:
                        self.cond.notify_all()
                    self._poll(time.monotonic() + WATCH_AGAIN_AFTER)
                    continue
                if exc.status == 410 and events and not expired and not self.stop.is_set():
                    # Expired (410 Gone, its resourceVersion compacted away): a watch that worked starts
                    # over at once, from a read of the pod and a new watch (no resourceVersion: it lists anew)
                    expired = True
                    self._read_instead()
                    failures = self.failures = 0
                    continue
                failures += 1
                # an ERROR event's Status says "<reason>: <message>" as the reason; an HTTP error, its body
                self.last_failure = f"{exc.status} {api_message(exc)}"
            except Exception as exc:  # connection blips and outages: retried until the runner is closed
                failures += 1
                self.last_failure = f"{type(exc).__name__}: {exc}"
                _log.debug("watching pod %s: %s", self.id, exc)
            self.failures = failures
            expired = False
            if failures >= READ_AFTER_FAILURES and not read and not self.stop.is_set():
                self._read_instead()  # a failing watch tells nothing: wait() and start() need the pod
            if failures == FAILURES_WARNED:  # once per outage; the watch goes on: giving up would blind wait()
                _log.warning("watching pod %s failed %d times in a row (%s); still retrying", self.id, failures,
                             self.last_failure or "API error")
            if failures:
                self.stop.wait(min(BACKOFF_STEP * failures, MAX_BACKOFF))
            elif ended_early(time.monotonic() - started, WATCH_SECONDS):  # changes, but the server hung up early
                self.stop.wait(REWATCH_PAUSE)

    def _read_instead(self) -> None:
        """Update from a read of the pod (a watch failing, a read may work); a failed read changes nothing."""
        try:
            pod = self._read_pod()
        except Exception as exc:  # the API is down for reads too: the watch loop retries both
            _log.debug("reading pod %s: %s", self.id, exc)
            return
        if pod is None or self.foreign(pod):
            self.update(None, True)
        else:
            self.update(pod, False)

    def _poll(self, until: float) -> None:
        """Read the pod every POLL_SECONDS (backing off while reads fail) until it is gone, the runner
        closes, or ``until`` (time.monotonic()) passed, after a read at least."""
        self.polling = True
        failures = 0
        while not self.stop.wait(min(POLL_SECONDS + BACKOFF_STEP * failures, MAX_BACKOFF)) and not self.gone:
            try:
                pod = self._read_pod()
            except Exception as exc:  # a 403 on get too tells nothing now: retried until closed
                failures += 1
                self.last_failure = f"{type(exc).__name__}: {exc}"
                _log.debug("reading pod %s: %s", self.id, exc)
            else:
                failures = 0
                if pod is None or self.foreign(pod):
                    self.update(None, True)
                else:
                    self.update(pod, False)
            if time.monotonic() >= until:
                return

    def _bounded_list(self) -> Callable[..., Any]:
        """list_namespaced_pod whose streamed answer, once its head came, may be quiet for a whole watch.

        It names no return type (no annotation, no ``:rtype:``), so the client's Watch leaves each
        event's object a dict and turns an ERROR event (a Status: 410 Expired, 500) into an ApiException
        with the server's reason and message. Its ``deserialize=False`` instead read an ERROR event's
        ``raw_object``, which only the deserializing path sets: a KeyError, the message lost."""
        func = self._api.list_namespaced_pod
        between_reads = WATCH_SECONDS + self.api_timeout

        def opened(*args: Any, **kwargs: Any) -> Any:
            with cancellable(self._cancel):  # close() ends a head still awaited
                resp = within_deadline(self._api.api_client, func, *args, **kwargs)  # the head: in total too
            with self._lock:
                closed = self.stop.is_set()
                if not closed:
                    self._resp = resp
            if closed:  # close() ran before this answer came: not read on until the server ends the watch
                shut_stream(resp)
                resp.release_conn()
                raise _Closed(f"the watch of pod {self.id} was closed")
            sock = getattr(getattr(resp, "connection", None), "sock", None)
            if sock is not None:
                sock.settimeout(between_reads)
            return BoundedLines(resp, f"the watch of pod {self.id}")  # no endless event line

        return opened

    def foreign(self, obj: dict[str, Any]) -> bool:
        """Whether ``obj`` is another pod than the runner's: one that took its name once it was deleted."""
        meta = obj.get("metadata")
        uid = meta.get("uid") if isinstance(meta, dict) else None
        return bool(self.uid) and uid != self.uid

    def update(self, obj: Any, deleted: bool) -> bool:
        """Take a pod read or watched (None: gone); whether that changed what is known of it."""
        if obj is not None and not _pod_shaped(obj):
            # every stored pod has a UID: an object without one (or not shaped as a pod at all) is no pod's
            # state, neither the runner's (its exit, its address) nor a stranger's saying the runner's is gone
            _log.debug("pod %s: ignoring a watched object that is no pod (%.80r)", self.id, obj)
            return False
        if obj is not None and self.foreign(obj):  # the runner's pod is gone; the stranger is never ours
            obj, deleted = None, True
        with self.cond:
            changed = (obj is not None and obj != self.pod) or (deleted and not self.gone)
            if obj is not None:
                self.pod = obj
            if deleted:
                self.gone = True
            self.cond.notify_all()
        return changed

    def wait_exit(self, timeout: float | None) -> int | None:
        """The plugin container's exit code (UNKNOWN_EXIT_CODE: ended without one, see unrecorded_end()); None while
        it runs past ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while True:
                code = pods.exit_code(self.pod) if self.pod else None
                if code is not None:
                    return code
                if self.gone:
                    return UNKNOWN_EXIT_CODE  # deleted without a reported exit code
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                if self._thread is None or not self._thread.is_alive():
                    return None if timeout is not None else UNKNOWN_EXIT_CODE
                self.cond.wait(timeout=0.5 if remaining is None else min(remaining, 0.5))

    def watching(self) -> bool:
        """Whether the watch thread runs and its last watch worked (not closed, failing, or ended by a 403)."""
        return (self._thread is not None and self._thread.is_alive() and not self.stop.is_set()
                and self.failures == 0 and not self.polling)

    def unrecorded_end(self, pod_id: str) -> str:
        """How the plugin ended when wait_exit() said UNKNOWN_EXIT_CODE, for the runner's exit_words(): a pod's
        words; a local process's (a child killed by SIGHUP reports -1 too) send a pod's owner looking at signals."""
        what = "was deleted" if self.gone else "failed"
        return (f"ended with no exit code: its pod {pod_id} {what} before its container's end was recorded"
                " (deleted by someone other than this host, evicted, or on a node that was drained or lost;"
                f" `kubectl get events -n {self.namespace}` says which)")

    def wait_gone(self, timeout: float) -> bool:
        with self.cond:
            self.cond.wait_for(lambda: self.gone, timeout=timeout)
        return self.gone

    def close(self) -> None:
        with self._lock:
            self.stop.set()
            resp = self._resp
        self._cancel.cancel()
        if self._watch is not None:
            self._watch.stop()
        if resp is not None:
            shut_stream(resp)  # a quiet watch's read wakes now, not when the server ends the watch
        if self._thread is not None:  # the Cancel ends its calls at once: the bound is for a thread stuck elsewhere
            self._thread.join(timeout=max(15.0, 2 * self.api_timeout + 5))


class _Closed(Exception):
    """The watch's answer came after close(): it is shut, not read."""


def _pod_shaped(obj: Any) -> bool:
    """Whether a pod the API server answered has the shape pods.py reads: a JSON object with a UID,
    its status (if any) an object. The fields inside are still read with care there."""
    if not isinstance(obj, dict):
        return False
    meta, status = obj.get("metadata"), obj.get("status")
    return (isinstance(meta, dict) and isinstance(meta.get("uid"), str) and bool(meta["uid"])
            and (status is None or isinstance(status, dict)))
