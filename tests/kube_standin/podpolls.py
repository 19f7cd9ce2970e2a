"""When the stand-in's pod monitor (pods.py) looks at each pod's container again.

Each round until the pod has run unchanged for SETTLE seconds, then every STEADY_POLL seconds,
a kubelet's relist period; poke() brings a pod back to each round when something changed its container.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from threading import RLock

    from .pods import Pod

# Each look at a Docker container is ~1 ms of this process's CPU (the docker SDK's request): at 5 a second
# per pod it held the GIL under the port-forward relay often enough to show in its p99, which a
# kube-apiserver (no GIL, the kubelet's relist in another process) never sees.
STEADY_POLL = 1.0
SETTLE = 3.0


def schedule(pod: Pod, rv: Any, lock: RLock) -> None:
    """Set when the monitor next looks at ``pod``, whose refresh began at resourceVersion ``rv`` (a
    refresh that published something since keeps it in each round)."""
    t = time.monotonic()
    with lock:
        status = pod.obj["status"]
        running = status.get("phase") == "Running" and all(
            cs.get("ready") for cs in status.get("containerStatuses") or [{}])
        if not running or pod.obj["metadata"].get("resourceVersion") != rv:
            pod.quiet_since, pod.next_poll = t, 0.0
        elif t - pod.quiet_since >= SETTLE:
            pod.next_poll = t + STEADY_POLL


def poke(pod: Pod, lock: RLock) -> None:
    """Look at ``pod`` in the monitor's next round (something changed its container)."""
    with lock:
        pod.quiet_since, pod.next_poll = time.monotonic(), 0.0
