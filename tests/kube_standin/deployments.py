"""A minimal apps/v1 Deployment for the stand-in: create, get, list, scale (PATCH), delete.

A controller thread keeps ``spec.replicas`` pods from ``spec.template`` (each
named ``<deployment>-<hash>-<random>`` with a ``pod-template-hash`` label, as a
ReplicaSet would), replaces pods that are deleted or end, removes the newest
ones on scale-down and all of them on delete. No rollouts: a changed template
applies to new pods only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import threading
import uuid
from typing import Any

from .apimachinery import selector_matches
from .pods import PodStore, now

ROUTES = [
    (re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/deployments/([^/]+)/scale$"), "scale"),
    (re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/deployments/([^/]+)$"), "deployment"),
    (re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/deployments$"), "deployments"),
]


class DeploymentStore:
    def __init__(self, pods: PodStore) -> None:
        self.pods = pods
        self.lock = pods.lock
        self.deployments: dict[tuple[str, str], dict[str, Any]] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        pods.listeners.append(lambda kind, pod: self._wake.set())
        self._thread = threading.Thread(target=self._loop, name="plugbay-standin-deployments")
        self._thread.start()

    def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        meta = obj["metadata"]
        with self.lock:
            if (meta["namespace"], meta["name"]) in self.deployments:
                return None
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1,
                        resourceVersion=self.pods._next_rv())
            obj["spec"].setdefault("replicas", 1)
            self.deployments[(meta["namespace"], meta["name"])] = obj
        self._wake.set()
        return self.get(meta["namespace"], meta["name"])

    def get(self, ns: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            dep = self.deployments.get((ns, name))
            if dep is None:
                return None
            out = copy.deepcopy(dep)
            owned = [p for p in self._owned(dep) if not p.deleting]
            ready = sum(1 for p in owned if any(c.get("type") == "Ready" and c.get("status") == "True"
                                                for c in p.obj["status"].get("conditions") or []))
            out["status"] = {"observedGeneration": dep["metadata"]["generation"], "replicas": len(owned),
                             "readyReplicas": ready, "availableReplicas": ready,
                             "updatedReplicas": len(owned)}
            return out

    def list(self, ns: str, labels: str) -> list[dict[str, Any]]:
        with self.lock:
            names = [n for (dns, n), d in sorted(self.deployments.items())
                     if dns == ns and selector_matches(labels, d["metadata"].get("labels") or {})]
        return [d for d in (self.get(ns, n) for n in names) if d is not None]

    def scale(self, ns: str, name: str, replicas: int) -> dict[str, Any] | None:
        with self.lock:
            dep = self.deployments.get((ns, name))
            if dep is None:
                return None
            dep["spec"]["replicas"] = replicas
            dep["metadata"]["generation"] += 1
            dep["metadata"]["resourceVersion"] = self.pods._next_rv()
        self._wake.set()
        return self.get(ns, name)

    def delete(self, ns: str, name: str) -> dict[str, Any] | None:
        found = self.get(ns, name)
        with self.lock:
            dep = self.deployments.pop((ns, name), None)
            pods = self._owned(dep) if dep else []
        for pod in pods:
            self.pods.delete(ns, pod.key[1], _grace(dep or {}))
        return found

    # --- the controller --------------------------------------------------------

    def _owned(self, dep: dict[str, Any]) -> list[Any]:
        uid = dep["metadata"]["uid"]
        return sorted((p for p in self.pods.pods.values()
                       if any(o.get("uid") == uid for o in p.obj["metadata"].get("ownerReferences") or [])),
                      key=lambda p: (p.obj["metadata"]["creationTimestamp"], p.obj["metadata"]["name"]))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            if not self._stop.is_set():
                self._reconcile()

    def _reconcile(self) -> None:
        creates, deletes = [], []
        with self.lock:
            for dep in self.deployments.values():
                live = [p for p in self._owned(dep) if not p.deleting
                        and p.obj["status"].get("phase") not in ("Succeeded", "Failed")]
                for ended in (p for p in self._owned(dep) if not p.deleting and p not in live):
                    deletes.append((ended.key, 0.0))  # ended pods are replaced, as a ReplicaSet does
                want = int(dep["spec"]["replicas"])
                deletes += [(p.key, _grace(dep)) for p in live[want:][::-1]]
                creates += [self._pod_for(dep) for _ in range(want - len(live))]
        for (ns, name), grace in deletes:
            self.pods.delete(ns, name, grace)
        for pod in creates:
            self.pods.create(pod)

    def _pod_for(self, dep: dict[str, Any]) -> dict[str, Any]:
        template = copy.deepcopy(dep["spec"]["template"])
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        meta = template.setdefault("metadata", {})
        meta["labels"] = {**(meta.get("labels") or {}), "pod-template-hash": digest}
        meta.update(name=f"{dep['metadata']['name']}-{digest}-{os.urandom(3).hex()[:5]}",
                    namespace=dep["metadata"]["namespace"],
                    ownerReferences=[{"apiVersion": "apps/v1", "kind": "ReplicaSet", "controller": True,
                                      "name": f"{dep['metadata']['name']}-{digest}",
                                      "uid": dep["metadata"]["uid"]}])
        return template

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)


def _grace(dep: dict[str, Any]) -> float:
    spec = ((dep.get("spec") or {}).get("template") or {}).get("spec") or {}
    return float(spec.get("terminationGracePeriodSeconds", 30))


class DeploymentRoutes:
    server: Any

    def _post_deployments(self: Any, ns: str, q: dict[str, str]) -> None:
        obj = self._body()
        if not self._allowed("create", "deployments", ns):
            return
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = ns
        spec = obj.get("spec") or {}
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        problems = [] if meta.get("name") else ["metadata.name: Required value"]
        if not ((spec.get("template") or {}).get("spec") or {}).get("containers"):
            problems.append("spec.template.spec.containers: Required value")
        if not selector or not selector.items() <= labels.items():
            problems.append("spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`")
        if problems:
            self._status(422, "Invalid", f'Deployment.apps "{meta.get("name", "")}" is invalid: ' + "; ".join(problems))
            return
        created = self.server.standin.deployments.create(obj)
        if created is None:
            self._status(409, "AlreadyExists", f'deployments.apps "{meta["name"]}" already exists',
                         kind="deployments", group="apps", name=meta["name"])
        else:
            self._json(201, created)

    def _get_deployments(self: Any, ns: str, q: dict[str, str]) -> None:
        if self._allowed("list", "deployments", ns):
            items = self.server.standin.deployments.list(ns, q.get("labelSelector", ""))
            self._json(200, {"kind": "DeploymentList", "apiVersion": "apps/v1", "metadata": {}, "items": items})

    def _reply(self: Any, found: dict[str, Any] | None, name: str, scale: bool = False) -> None:
        if found is None:
            self._status(404, "NotFound", f'deployments.apps "{name}" not found', kind="deployments",
                         group="apps", name=name)
        elif scale:
            self._json(200, {"kind": "Scale", "apiVersion": "autoscaling/v1",
                             "metadata": {k: found["metadata"][k] for k in ("name", "namespace", "uid")},
                             "spec": {"replicas": found["spec"]["replicas"]},
                             "status": {"replicas": found["status"]["replicas"],
                                        "selector": ",".join(f"{k}={v}" for k, v in
                                                             found["spec"]["selector"]["matchLabels"].items())}})
        else:
            self._json(200, found)

    def _get_deployment(self: Any, ns: str, name: str, q: dict[str, str]) -> None:
        if self._allowed("get", "deployments", ns, name):
            self._reply(self.server.standin.deployments.get(ns, name), name)

    def _get_scale(self: Any, ns: str, name: str, q: dict[str, str]) -> None:
        if self._allowed("get", "deployments/scale", ns, name):
            self._reply(self.server.standin.deployments.get(ns, name), name, scale=True)

    def _patch(self: Any, ns: str, name: str, resource: str) -> None:
        body = self._body()
        if not self._allowed("patch", resource, ns, name):
            return
        replicas = (body.get("spec") or {}).get("replicas") if isinstance(body, dict) else None
        if not isinstance(replicas, int) or replicas < 0:
            self._status(422, "Invalid", f'Deployment.apps "{name}" is invalid: this stand-in patches only'
                         " spec.replicas (a merge patch with a non-negative integer)")
            return
        self._reply(self.server.standin.deployments.scale(ns, name, replicas), name,
                    scale=resource.endswith("/scale"))

    def _patch_deployment(self: Any, ns: str, name: str, q: dict[str, str]) -> None:
        self._patch(ns, name, "deployments")

    def _patch_scale(self: Any, ns: str, name: str, q: dict[str, str]) -> None:
        self._patch(ns, name, "deployments/scale")

    def _delete_deployment(self: Any, ns: str, name: str, q: dict[str, str]) -> None:
        self._body()
        if self._allowed("delete", "deployments", ns, name):
            self._reply(self.server.standin.deployments.delete(ns, name), name)
