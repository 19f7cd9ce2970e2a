"""The pod as the Kubernetes runner's watch sees it: its last state and whether it is gone.

A plugbay-kwatch-<pod> thread follows a watch on the one pod (field-selected,
re-opened every 10 s; a pod deleted between two watches is noticed by a read)
so start, wait and kill wake the moment the pod changes instead of polling.
Connection blips are retried a bounded number of times in a row; a 403 is kept
as a PermissionDeniedError for the starting thread to raise.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from plugbay.errors import PermissionDeniedError
from plugbay.runners.kubernetes import pods
from plugbay.runners.kubernetes.rbac import denied_message

_log = logging.getLogger("plugbay.runners.kubernetes")


class PodWatch:
    """The watched state of one pod; ``cond`` guards ``pod`` and ``gone`` and is notified on each change."""

    def __init__(self, api: Any, namespace: str, read_pod: Callable[[], dict[str, Any] | None]) -> None:
        self._api = api
        self.namespace = namespace
        self._read_pod = read_pod
        self.pod_name = ""
        self.cond = threading.Condition()
        self.pod: dict[str, Any] | None = None
        self.gone = False
        self.stop = threading.Event()
        self.error: BaseException | None = None  # why the watch ended for good (a 403)
        self._watch: Any = None
        self._thread: threading.Thread | None = None

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.pod_name}"

    def start(self, pod_name: str) -> None:
        if self._thread is None:
            self.pod_name = pod_name
            self._thread = threading.Thread(target=self._loop, name=f"plugbay-kwatch-{pod_name}")
            self._thread.start()

    def _loop(self) -> None:
        from kubernetes import watch as watch_mod
        from kubernetes.client.exceptions import ApiException

        watch: Any = watch_mod

        failures = 0
        while not self.stop.is_set() and not self.gone:
            w = watch.Watch()
            self._watch = w
            try:
                for ev in w.stream(self._api.list_namespaced_pod, self.namespace, deserialize=False,
                                   field_selector=f"metadata.name={self.pod_name}", timeout_seconds=10,
                                   _request_timeout=(10, 30)):
                    self.update(ev["object"], ev["type"] == "DELETED")
                    if self.stop.is_set():
                        break
                failures = 0
                if not self.stop.is_set() and not self.gone and self._read_pod() is None:
                    self.update(None, True)
            except ApiException as exc:
                if exc.status == 403:
                    self.error = PermissionDeniedError(denied_message("watch", "pods", self.namespace))
                    with self.cond:
                        self.cond.notify_all()
                    return
                failures += 1
            except Exception as exc:  # connection blips: retry a bounded number of times in a row
                failures += 1
                _log.debug("watching pod %s: %s", self.id, exc)
            if failures >= 30:
                _log.warning("giving up watching pod %s after %d failures", self.id, failures)
                return
            if failures:
                self.stop.wait(min(0.2 * failures, 2.0))

    def update(self, obj: dict[str, Any] | None, deleted: bool) -> None:
        with self.cond:
            if obj is not None:
                self.pod = obj
            if deleted:
                self.gone = True
            self.cond.notify_all()

    def wait_exit(self, timeout: float | None) -> int | None:
        """The plugin container's exit code (-1: deleted without one); None while it runs past ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while True:
                code = pods.exit_code(self.pod) if self.pod else None
                if code is not None:
                    return code
                if self.gone:
                    return -1  # deleted without a reported exit code
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                if self._thread is None or not self._thread.is_alive():
                    return None if timeout is not None else -1
                self.cond.wait(timeout=0.5 if remaining is None else min(remaining, 0.5))

    def watching(self) -> bool:
        """Whether the watch thread runs (not closed, not ended by a 403 or too many failures)."""
        return self._thread is not None and self._thread.is_alive() and not self.stop.is_set()

    def wait_gone(self, timeout: float) -> bool:
        with self.cond:
            self.cond.wait_for(lambda: self.gone, timeout=timeout)
        return self.gone

    def close(self) -> None:
        self.stop.set()
        if self._watch is not None:
            self._watch.stop()
        if self._thread is not None:
            self._thread.join(timeout=15)
