"""The stand-in's pod deletion: graceful (terminating until its container stopped) or forced, and the lost
node's (StandIn.lose_node) graceful delete that no kubelet confirms."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pods import Pod, PodStore


def delete(store: PodStore, ns: str, name: str, grace: float) -> dict[str, Any] | None:
    """gracePeriodSeconds=0 is the API's force delete: the object goes at once (also a terminating
    one), its container is stopped after; else it is terminating until its container stopped."""
    from .pods import now  # pods imports this module
    with store.lock:
        pod = store.pods.get((ns, name))
        if pod is None:
            return None
        first, pod.deleting = not pod.deleting, True
        if first or grace <= 0:
            pod.obj["metadata"].setdefault("deletionTimestamp", now())
            pod.obj["metadata"]["deletionGracePeriodSeconds"] = int(grace)
        if first:
            store.event(pod, "Killing", f"Stopping container {pod.container['name']}")
        if grace <= 0:
            del store.pods[pod.key]
            store._publish("DELETED", pod)
        elif first:
            store._publish("MODIFIED", pod)
        # on a lost node no kubelet confirms a graceful delete: only a force delete ends the pod
        if (first or grace <= 0) and not pod.finishing and not (store.node_lost and grace > 0):
            pod.finishing = True
            store._spawn("delete", lambda: _finish(store, pod, grace))
        return copy.deepcopy(pod.obj)


def _finish(store: PodStore, pod: Pod, grace: float) -> None:
    box = pod.box
    if box is not None:
        box.stop(grace)
        if store.pods.get(pod.key) is pod:  # a force-deleted pod has no status left to report
            store._refresh(pod)
        box.remove()
    with store.lock:
        if store.pods.get(pod.key) is pod:
            del store.pods[pod.key]
            store._publish("DELETED", pod)
