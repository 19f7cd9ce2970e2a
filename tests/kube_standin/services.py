"""The stand-in's Services and the EndpointSlices its "controller" keeps for them.

A Service selects pods by label; for each one the store keeps EndpointSlices
(discovery.k8s.io/v1, label ``kubernetes.io/service-name``) the way the
endpointslice controller does: a pod with an IP is an endpoint, ready while its
Ready condition holds, ``terminating`` (not ready, still serving) once its
deletion started, and gone when the pod is gone or has ended.

Pods here are reached at 127.0.0.1 on the port the engine published for the
target container port (never on a bridge address), so two pods never share a
port number: like the controller does for pods whose named target port
resolves to different numbers, pods with different ports get separate slices.

Watches honour resourceVersion: a watch from an old version replays what
changed since, one from a compacted version gets a 410 Expired ERROR event.
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from collections import deque
from typing import Any

from .apimachinery import selector_matches
from .pods import NODE_NAME, POD_IP, PodStore, Watcher, now

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY = {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}


class ServiceStore:
    def __init__(self, pods: PodStore, history: int = 1000) -> None:
        self.pods = pods
        self.lock = pods.lock  # one lock: slices change inside the pod store's publish
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        self.slices: dict[tuple[str, str], dict[str, Any]] = {}
        self.watchers: list[Watcher] = []
        self.history: deque[tuple[int, str, dict[str, Any]]] = deque(maxlen=history)
        self.compacted = 0  # watches from a resourceVersion below this get 410 Expired
        pods.listeners.append(self._pod_changed)

    # --- Services ------------------------------------------------------------

    def create_service(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        with self.lock:
            if key in self.services:
                return None
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), resourceVersion=self.pods._next_rv())
            spec = obj.setdefault("spec", {})
            # no kube-proxy here: every Service is headless, clients use its EndpointSlices
            spec.update(clusterIP="None", clusterIPs=["None"], type="ClusterIP")
            for port in spec.get("ports") or []:
                port.setdefault("protocol", "TCP")
                port.setdefault("targetPort", port["port"])
            obj["status"] = {"loadBalancer": {}}
            self.services[key] = obj
            self._sync(key[0])
            return copy.deepcopy(obj)

    def get_service(self, ns: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            svc = self.services.get((ns, name))
            return copy.deepcopy(svc) if svc else None

    def list_services(self, ns: str, labels: str) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(s) for (n, _), s in sorted(self.services.items())
                    if n == ns and selector_matches(labels, s["metadata"].get("labels") or {})]

    def delete_service(self, ns: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            svc = self.services.pop((ns, name), None)
            if svc is not None:
                self._sync(ns)
            return svc

    # --- EndpointSlices --------------------------------------------------------

    def list_slices(self, ns: str, labels: str) -> tuple[list[dict[str, Any]], str]:
        w = Watcher(ns, labels, "")
        with self.lock:
            items = [copy.deepcopy(s) for _, s in sorted(self.slices.items()) if w.wants(s)]
            return items, str(self.pods._rv)

    def get_slice(self, ns: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            found = self.slices.get((ns, name))
            return copy.deepcopy(found) if found else None

    def watch_slices(self, ns: str, labels: str, since: str | None) -> Watcher:
        """A watcher fed from ``since`` (replayed history) or, without it, from ADDED events of all."""
        w = Watcher(ns, labels, "")
        with self.lock:
            if since and since != "0":
                rv = int(since)
                if rv < self.compacted:
                    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": f"too old resource version: {rv} ({self.pods._rv})",
                              "reason": "Expired", "code": 410}
                    w.events.put(("ERROR", status))
                    w.events.put(None)
                    return w
                for event_rv, kind, obj in self.history:
                    if event_rv > rv and w.wants(obj):
                        w.events.put((kind, copy.deepcopy(obj)))
            else:
                for _, s in sorted(self.slices.items()):
                    if w.wants(s):
                        w.events.put(("ADDED", copy.deepcopy(s)))
            self.watchers.append(w)
        return w

    def unwatch(self, w: Watcher) -> None:
        with self.lock:
            if w in self.watchers:
                self.watchers.remove(w)

    def expire_watches(self) -> int:
        """End every slice watch and compact history, as an API server restart would."""
        with self.lock:
            self.compacted = self.pods._rv + 1
            self.history.clear()
            for w in self.watchers:
                w.events.put(None)
            return len(self.watchers)

    # --- the controller ----------------------------------------------------------

    def _pod_changed(self, kind: str, pod: dict[str, Any]) -> None:
        self._sync(pod["metadata"]["namespace"])

    def _sync(self, ns: str) -> None:
        """Bring every slice in ``ns`` in line with its Service and pods (under the lock)."""
        want: dict[tuple[str, str], dict[str, Any]] = {}
        pods = [p.obj for (pns, _), p in sorted(self.pods.pods.items()) if pns == ns]
        for (sns, name), svc in self.services.items():
            if sns == ns and svc["spec"].get("selector"):
                for slc in _slices_for(svc, pods):
                    want[(ns, slc["metadata"]["name"])] = slc
        for key in [k for k in self.slices if k[0] == ns and k not in want]:
            self._emit("DELETED", self.slices.pop(key))
        for key, slc in want.items():
            old = self.slices.get(key)
            if old is not None and _content(old) == _content(slc):
                continue
            if old is not None:
                slc["metadata"].update(uid=old["metadata"]["uid"],
                                       creationTimestamp=old["metadata"]["creationTimestamp"])
            self.slices[key] = slc
            self._emit("ADDED" if old is None else "MODIFIED", slc)

    def _emit(self, kind: str, slc: dict[str, Any]) -> None:
        rv = self.pods._next_rv()
        slc["metadata"]["resourceVersion"] = rv
        snapshot = copy.deepcopy(slc)
        if len(self.history) == self.history.maxlen:  # the oldest event goes: watches from before it expire
            self.compacted = max(self.compacted, self.history[0][0])
        self.history.append((int(rv), kind, snapshot))
        for w in self.watchers:
            if w.wants(snapshot):
                w.events.put((kind, copy.deepcopy(snapshot)))


def _content(slc: dict[str, Any]) -> Any:
    return slc["endpoints"], slc["ports"], slc["metadata"].get("labels")


def _target_port(pod: dict[str, Any], target: Any) -> int | None:
    """The 127.0.0.1 port published for the pod's container port named/numbered ``target``."""
    for c in pod["spec"].get("containers") or []:
        for p in c.get("ports") or []:
            if (p.get("name") == target if isinstance(target, str) else p.get("containerPort") == target):
                return int(p["hostPort"]) if p.get("hostPort") else None
    return None


def _slices_for(svc: dict[str, Any], pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
    groups: dict[tuple[tuple[str, int], ...], list[dict[str, Any]]] = {}
    for pod in pods:
        status, meta = pod.get("status") or {}, pod["metadata"]
        if not status.get("podIP") or status.get("phase") in ("Succeeded", "Failed") \
                or not selector_matches(",".join(f"{k}={v}" for k, v in svc["spec"]["selector"].items()),
                                        meta.get("labels") or {}):
            continue
        ports = []
        for sp in svc["spec"].get("ports") or []:
            host_port = _target_port(pod, sp["targetPort"])
            if host_port is not None:
                ports.append((str(sp.get("name") or ""), host_port))
        if not ports:
            continue  # nothing published for the target port: unreachable from the host
        ready_cond = any(c.get("type") == "Ready" and c.get("status") == "True"
                         for c in status.get("conditions") or [])
        terminating = bool(meta.get("deletionTimestamp"))
        groups.setdefault(tuple(ports), []).append({
            "addresses": [POD_IP],
            "conditions": {"ready": ready_cond and not terminating, "serving": ready_cond,
                           "terminating": terminating},
            "targetRef": {"kind": "Pod", "namespace": ns, "name": meta["name"], "uid": meta["uid"]},
            "nodeName": NODE_NAME})
    out = []
    for ports_key, endpoints in groups.items():
        digest = hashlib.sha256(repr(ports_key).encode()).hexdigest()[:5]
        out.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-{digest}", "namespace": ns, "generateName": f"{name}-",
                         "uid": str(uuid.uuid4()), "creationTimestamp": now(),
                         "labels": {SERVICE_NAME_LABEL: name, **MANAGED_BY},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name,
                                              "uid": svc["metadata"]["uid"], "controller": True,
                                              "blockOwnerDeletion": True}]},
            "addressType": "IPv4", "endpoints": endpoints,
            "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports_key]})
    return out
