"""The stand-in's pods: objects, real containers behind them, status, events and watchers.

A monitor thread polls each pod's real container (every 0.2 s; a pod running unchanged for a few seconds
only every second, a kubelet's relist period: podpolls.py) and derives the pod status a kubelet would report:
phase, containerStatuses (running / waiting with ErrImagePull, ImagePullBackOff, CrashLoopBackOff,
CreateContainerConfigError / terminated with exit code and OOMKilled), conditions and events. Every change
bumps the resourceVersion and is sent to matching watchers.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from . import deletion
from .apimachinery import fields_match, parse_cpu, parse_quantity, selector_matches
from .podpolls import schedule
from .runtime import Box, BoxState, ContainerConfigError, ContainerRequest, ImageMissing

NODE_NAME = "standin-node"
NODE_LABELS = {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
               "kubernetes.io/hostname": NODE_NAME}
# The stand-in's stand-in for a pod IP: every pod "runs on the host", and each
# declared container port gets a hostPort (published by the engine on this
# address), the way a pod with hostPort is reached on its node's IP.
POD_IP = "127.0.0.1"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Pod:
    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj
        self.box: Box | None = None
        self.failure: tuple[str, str] | None = None  # waiting reason, message
        self.restarts = 0
        self.last_terminated: dict[str, Any] | None = None
        self.backoff_until = 0.0
        self.deleting = False
        self.evicted = False  # StandIn.evict_pod: the kubelet ended it, so it fails whatever its exit code
        self.unreported = False  # StandIn.fail_pod_unrecorded: no kubelet reports its status any more
        self.finishing = False  # its deletion's container stop runs (once)
        self.quiet_since = 0.0  # monotonic time since which it has run with its status unchanged
        self.next_poll = 0.0  # the monitor's next look at it (0: the next round)

    @property
    def key(self) -> tuple[str, str]:
        return self.obj["metadata"]["namespace"], self.obj["metadata"]["name"]

    @property
    def container(self) -> dict[str, Any]:
        return dict(self.obj["spec"]["containers"][0])


class Watcher:
    def __init__(self, namespace: str | None, labels: str, fields: str) -> None:
        self.namespace, self.labels, self.fields = namespace, labels, fields
        self.events: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()

    def wants(self, obj: dict[str, Any]) -> bool:
        meta = obj["metadata"]
        return ((self.namespace is None or meta["namespace"] == self.namespace)
                and selector_matches(self.labels, meta.get("labels") or {})
                and fields_match(self.fields, obj))


class PodStore:
    def __init__(self, backend: Any, poll_interval: float = 0.2) -> None:
        self.backend = backend
        self.lock = threading.RLock()
        self.pods: dict[tuple[str, str], Pod] = {}
        self.events: list[dict[str, Any]] = []
        self.watchers: list[Watcher] = []
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []  # under the lock (services.py)
        self._rv = 1000
        self._stop = threading.Event()
        self._poll = poll_interval
        self._threads: list[threading.Thread] = []
        self.start_delay = 0.0
        self.node_lost = False  # StandIn.lose_node: graceful deletes are never confirmed
        self.mutate: Callable[[dict[str, Any]], None] | None = None  # StandIn.mutate_pods
        self.start_durations: list[float] = []  # seconds the engine took to create+start each container
        self._monitor = threading.Thread(target=self._monitor_loop, name="plugbay-standin-monitor")
        self._monitor.start()

    # --- bookkeeping ---------------------------------------------------------

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _publish(self, kind: str, pod: Pod) -> None:
        pod.obj["metadata"]["resourceVersion"] = self._next_rv()
        snapshot = copy.deepcopy(pod.obj)
        for w in self.watchers:
            if w.wants(snapshot):
                w.events.put((kind, snapshot))
        for listener in self.listeners:
            listener(kind, snapshot)

    def event(self, pod: Pod, reason: str, message: str, type_: str = "Normal") -> None:
        ns, name = pod.key
        for ev in self.events:
            io = ev["involvedObject"]
            if io["name"] == name and io["namespace"] == ns and ev["reason"] == reason \
                    and ev["message"] == message:
                ev["count"] += 1
                ev["lastTimestamp"] = now()
                return
        self.events.append({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:16]}", "namespace": ns,
                         "resourceVersion": self._next_rv(), "creationTimestamp": now()},
            "involvedObject": {"kind": "Pod", "namespace": ns, "name": name, "apiVersion": "v1",
                               "uid": pod.obj["metadata"]["uid"]},
            "reason": reason, "message": message, "type": type_, "count": 1,
            "firstTimestamp": now(), "lastTimestamp": now(),
            "source": {"component": "kubelet", "host": NODE_NAME},
        })

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=f"plugbay-standin-{name}")
        self._threads = [x for x in self._threads if x.is_alive()]
        self._threads.append(t)
        t.start()

    # --- API operations ------------------------------------------------------

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        if self.mutate is not None:
            self.mutate(obj)
        meta = obj["metadata"]
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now())
        spec = obj["spec"]
        spec.setdefault("restartPolicy", "Always")
        obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        pod = Pod(obj)
        with self.lock:
            self.pods[pod.key] = pod
            selector = spec.get("nodeSelector") or {}
            unmatched = {k: v for k, v in selector.items() if NODE_LABELS.get(k) != v}
            if unmatched:
                msg = ("0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
                       " preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.")
                obj["status"]["conditions"] = [{"type": "PodScheduled", "status": "False",
                                                "reason": "Unschedulable", "message": msg,
                                                "lastTransitionTime": now()}]
                self.event(pod, "FailedScheduling", msg, "Warning")
                self._publish("ADDED", pod)
                return copy.deepcopy(obj)
            spec["nodeName"] = NODE_NAME
            obj["status"].update(hostIP=POD_IP, startTime=now(), conditions=[
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}])
            self.event(pod, "Scheduled", f"Successfully assigned {pod.key[0]}/{pod.key[1]} to {NODE_NAME}")
            self._set_waiting(pod, "ContainerCreating", "")
            self._publish("ADDED", pod)
            result = copy.deepcopy(obj)
        self._spawn("start", lambda: self._start(pod))
        return result

    def _request(self, pod: Pod) -> ContainerRequest:
        c = pod.container
        sc = {**(pod.obj["spec"].get("securityContext") or {}), **(c.get("securityContext") or {})}
        limits = (c.get("resources") or {}).get("limits") or {}
        ports = [int(p["containerPort"]) for p in c.get("ports") or []]
        volumes = {v["name"]: v for v in pod.obj["spec"].get("volumes") or []}
        writable = [m["mountPath"] for m in c.get("volumeMounts") or []
                    if "emptyDir" in volumes.get(m["name"], {})]
        env = {e["name"]: str(e.get("value", "")) for e in c.get("env") or []}
        user = None
        if sc.get("runAsUser") is not None:
            user = str(sc["runAsUser"]) + (f":{sc['runAsGroup']}" if sc.get("runAsGroup") is not None else "")
        caps = (sc.get("capabilities") or {}).get("drop") or []
        return ContainerRequest(
            pod_key="/".join(pod.key), image=c["image"], command=c.get("command"), args=c.get("args"),
            env=env, ports=ports, labels=pod.obj["metadata"].get("labels") or {},
            working_dir=c.get("workingDir"), user=user, run_as_non_root=bool(sc.get("runAsNonRoot")),
            read_only=bool(sc.get("readOnlyRootFilesystem")),
            cap_drop=["ALL" if x == "ALL" else x for x in caps],
            no_new_privileges=sc.get("allowPrivilegeEscalation") is False,
            memory_bytes=parse_quantity(limits["memory"]) if "memory" in limits else None,
            nano_cpus=parse_cpu(limits["cpu"]) if "cpu" in limits else None,
            writable_dirs=writable)

    def _start(self, pod: Pod) -> None:
        image = pod.container["image"]
        if self.start_delay and self._stop.wait(self.start_delay):
            return  # a slow image pull, for start-timeout tests
        began = time.monotonic()
        try:
            box = self.backend.run(self._request(pod))
            self.start_durations.append(time.monotonic() - began)
        except ImageMissing as exc:
            with self.lock:
                pod.failure = ("ErrImagePull", str(exc))
                self.event(pod, "Pulling", f'Pulling image "{image}"')
                self.event(pod, "Failed", str(exc), "Warning")
                self.event(pod, "Failed", "Error: ErrImagePull", "Warning")
                self._set_waiting(pod, "ErrImagePull", str(exc))
                pod.backoff_until = time.monotonic() + 1.0
                self._publish("MODIFIED", pod)
            return
        except (ContainerConfigError, Exception) as exc:  # noqa: B014 - any start failure is a config error
            with self.lock:
                pod.failure = ("CreateContainerConfigError", str(exc))
                self.event(pod, "Failed", f"Error: {exc}", "Warning")
                self._set_waiting(pod, "CreateContainerConfigError", str(exc))
                self._publish("MODIFIED", pod)
            return
        with self.lock:
            if pod.deleting or pod.key not in self.pods:
                box.remove()
                return
            pod.box = box
            c = pod.obj["spec"]["containers"][0]
            for port in c.get("ports") or []:
                host_port = box.published.get(int(port["containerPort"]))
                if host_port:
                    port["hostPort"] = host_port
                    port["hostIP"] = POD_IP
            self.event(pod, "Pulled", f'Container image "{image}" already present on machine')
            self.event(pod, "Created", f"Created container {c['name']}")
            self.event(pod, "Started", f"Started container {c['name']}")
        self._refresh(pod)

    def _set_waiting(self, pod: Pod, reason: str, message: str) -> None:
        c = pod.container
        status = {"name": c["name"], "image": c["image"], "imageID": "", "ready": False,
                  "started": False, "restartCount": pod.restarts,
                  "state": {"waiting": {"reason": reason, **({"message": message} if message else {})}}}
        if pod.last_terminated:
            status["lastState"] = {"terminated": pod.last_terminated}
        pod.obj["status"]["containerStatuses"] = [status]

    def _terminated(self, st: BoxState, box: Box) -> dict[str, Any]:
        code = st.exit_code if st.exit_code is not None else 137
        reason = "OOMKilled" if st.oom_killed else ("Completed" if code == 0 else "Error")
        return {"exitCode": code, "reason": reason, "startedAt": st.started_at,
                "finishedAt": st.finished_at or now(), "containerID": f"{box.kind}://{box.id}"}

    def _refresh(self, pod: Pod) -> None:
        """Derive the pod status from its real container; publish when it changed."""
        with self.lock:
            if pod.unreported:
                return
            before = copy.deepcopy(pod.obj["status"])
            box = pod.box
            if pod.failure and pod.failure[0] in ("ErrImagePull", "ImagePullBackOff"):
                if pod.failure[0] == "ErrImagePull" and time.monotonic() >= pod.backoff_until:
                    pod.failure = ("ImagePullBackOff", f'Back-off pulling image "{pod.container["image"]}"')
                    self._set_waiting(pod, *pod.failure)
                    self.event(pod, "BackOff", pod.failure[1], "Normal")
            if box is None:
                if pod.obj["status"] != before:
                    self._publish("MODIFIED", pod)
                return
        st = box.state()  # outside the lock: a docker round trip
        with self.lock:
            if pod.unreported:  # marked so while the container was looked at
                return
            c = pod.container
            status = pod.obj["status"]
            cid = f"{box.kind}://{box.id}"
            policy = pod.obj["spec"].get("restartPolicy", "Always")
            if st.running:
                status["phase"] = "Running"
                status.update(podIP=POD_IP, podIPs=[{"ip": POD_IP}])
                cs = {"name": c["name"], "image": c["image"], "imageID": c["image"], "containerID": cid,
                      "ready": True, "started": True, "restartCount": pod.restarts,
                      "state": {"running": {"startedAt": st.started_at}}}
                if pod.last_terminated:
                    cs["lastState"] = {"terminated": pod.last_terminated}
                status["containerStatuses"] = [cs]
                status["conditions"] = [{"type": t, "status": "True", "lastTransitionTime": now()}
                                        for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
            elif st.exit_code is not None:
                term = self._terminated(st, box)
                restart = policy == "Always" or (policy == "OnFailure" and term["exitCode"] != 0)
                if restart and not pod.deleting:
                    if pod.backoff_until == 0.0:
                        pod.restarts += 1
                        pod.last_terminated = term
                        pod.backoff_until = time.monotonic() + min(10.0, 0.5 * 2 ** pod.restarts)
                        self._set_waiting(pod, "CrashLoopBackOff",
                                          f"back-off restarting failed container {c['name']} in pod {pod.key[1]}")
                        status["phase"] = "Running"
                        self.event(pod, "BackOff", "Back-off restarting failed container", "Warning")
                    elif time.monotonic() >= pod.backoff_until:
                        pod.backoff_until = 0.0
                        try:
                            box.restart()
                        except Exception as exc:
                            self.event(pod, "Failed", f"restart failed: {exc}", "Warning")
                else:
                    status["phase"] = "Succeeded" if term["exitCode"] == 0 and not pod.evicted else "Failed"
                    status["containerStatuses"] = [{
                        "name": c["name"], "image": c["image"], "imageID": c["image"], "containerID": cid,
                        "ready": False, "started": False, "restartCount": pod.restarts,
                        "state": {"terminated": term},
                        **({"lastState": {"terminated": pod.last_terminated}} if pod.last_terminated else {})}]
                    status["conditions"] = [{"type": "Ready", "status": "False", "reason": "PodCompleted",
                                             "lastTransitionTime": now()}]
                    if term["reason"] == "OOMKilled" and not any(
                            e["reason"] == "OOMKilling" and e["involvedObject"]["name"] == pod.key[1]
                            for e in self.events):
                        self.event(pod, "OOMKilling", f"Memory cgroup out of memory: Killed process in"
                                   f" container {c['name']}", "Warning")
            if _strip_times(status) != _strip_times(before):
                self._publish("MODIFIED", pod)

    def get(self, ns: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            pod = self.pods.get((ns, name))
            return copy.deepcopy(pod.obj) if pod else None

    def box(self, ns: str, name: str) -> Box | None:
        with self.lock:
            pod = self.pods.get((ns, name))
            return pod.box if pod else None

    def list(self, ns: str | None, labels: str, fields: str) -> list[dict[str, Any]]:
        w = Watcher(ns, labels, fields)
        with self.lock:
            return [copy.deepcopy(p.obj) for p in self.pods.values() if w.wants(p.obj)]

    def watch(self, ns: str | None, labels: str, fields: str) -> Watcher:
        w = Watcher(ns, labels, fields)
        with self.lock:
            for p in self.pods.values():
                if w.wants(p.obj):
                    w.events.put(("ADDED", copy.deepcopy(p.obj)))
            self.watchers.append(w)
        return w

    def unwatch(self, w: Watcher) -> None:
        with self.lock:
            if w in self.watchers:
                self.watchers.remove(w)

    def delete(self, ns: str, name: str, grace: float) -> dict[str, Any] | None:
        return deletion.delete(self, ns, name, grace)  # with the lost node's knob, in deletion.py

    # --- lifecycle -----------------------------------------------------------

    def _monitor_loop(self) -> None:
        while not self._stop.wait(self._poll):
            with self.lock:
                t = time.monotonic()
                pods = [p for p in self.pods.values() if not p.deleting and t >= p.next_poll]
            for pod in pods:
                rv = pod.obj["metadata"].get("resourceVersion")
                try:
                    self._refresh(pod)
                except Exception:
                    pass  # the container may vanish between listing and polling
                schedule(pod, rv, self.lock)

    def close(self) -> None:
        self._stop.set()
        self._monitor.join(timeout=10)
        with self.lock:
            pods = list(self.pods.values())
            for w in self.watchers:
                w.events.put(None)
        for t in self._threads:
            t.join(timeout=30)
        for pod in pods:
            if pod.box is not None:
                pod.box.remove()
        with self.lock:
            self.pods.clear()


def _strip_times(status: dict[str, Any]) -> Any:
    out = copy.deepcopy(status)
    for cond in out.get("conditions") or []:
        cond.pop("lastTransitionTime", None)
    return out
