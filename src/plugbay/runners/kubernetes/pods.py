"""Pod manifests and pod status for the Kubernetes runner (plain dicts in API camelCase).

Kept apart from the runner so the manifest rules (secure defaults, template
merge, what the runner forces) and the reading of a pod's status (what counts
as a start failure, the exit code, a diagnosis) can be read on one screen each.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from plugbay.errors import (
    ConfigError,
    ImageNotFoundError,
    PluginExitedError,
    PodCrashLoopError,
    PodUnschedulableError,
    RunnerError,
)

CONTAINER_NAME = "plugin"
PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
CONFIG_FAILURES = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")
# Host env vars that mean nothing inside a pod (a host folder path).
_HOST_ONLY_ENV = ("PLUGIN_UNIX_SOCKET_DIR", "PLUGIN_UNIX_SOCKET_GROUP")

Json = dict[str, Any]


def pod_name_for(image: str) -> str:
    base = image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    base = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")[:40] or "plugin"
    return f"plugbay-{base}-{secrets.token_hex(6)}"  # 48 random bits: names of live pods should not meet


def label_value(value: str) -> str:
    """A valid label value: at most 63 of [A-Za-z0-9-_.], alphanumeric at both ends."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[:63]
    return cleaned.strip("-_.")


def merge(base: Any, over: Any) -> Any:
    """Deep merge: dicts key by key; lists of named items (containers, env, volumes) by name."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(over, list) and all(
            isinstance(x, dict) and "name" in x for x in base + over):
        merged = {x["name"]: x for x in base}
        for item in over:
            merged[item["name"]] = merge(merged[item["name"]], item) if item["name"] in merged else item
        return list(merged.values())
    return copy.deepcopy(over)


def secure_defaults(run_as_user: int | None) -> Json:
    sc: Json = {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if run_as_user is not None:
        sc["runAsUser"] = run_as_user
        sc["runAsGroup"] = run_as_user
    return sc


def build_pod(*, name: str, image: str, pull_policy: str, labels: Mapping[str, str],
              annotations: Mapping[str, str], env: Mapping[str, str], container_port: int,
              resources: Mapping[str, Any] | None, service_account: str | None,
              node_selector: Mapping[str, str] | None, tolerations: Sequence[Mapping[str, Any]] | None,
              run_as_user: int | None, writable_dirs: Sequence[str], command: Sequence[str] | None,
              args: Sequence[str] | None, template: Mapping[str, Any] | None) -> Json:
    """The pod: secure defaults, then the user's template over them, then what the runner needs."""
    container: Json = {"name": CONTAINER_NAME, "securityContext": secure_defaults(run_as_user),
                       "volumeMounts": [{"name": f"plugbay-scratch-{i}", "mountPath": d}
                                        for i, d in enumerate(writable_dirs)]}
    if resources:
        container["resources"] = dict(resources)
    spec: Json = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": service_account is not None,
        "containers": [container],
        "volumes": [{"name": f"plugbay-scratch-{i}", "emptyDir": {"sizeLimit": "64Mi"}}
                    for i in range(len(writable_dirs))],
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    }
    if service_account:
        spec["serviceAccountName"] = service_account
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        spec["tolerations"] = [dict(t) for t in tolerations]
    pod: Json = {"apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": spec}
    if template:
        tmpl = copy.deepcopy(dict(template))
        tcontainers = tmpl.get("spec", {}).get("containers")
        if tcontainers:  # the template's first container is the plugin's, whatever its name
            tcontainers[0] = {**tcontainers[0], "name": CONTAINER_NAME}
        pod = merge(pod, tmpl)
    meta = pod.setdefault("metadata", {})
    meta["name"] = name
    meta.pop("generateName", None)
    meta["labels"] = {**(meta.get("labels") or {}), **{k: label_value(v) for k, v in labels.items()}}
    meta["annotations"] = {**(meta.get("annotations") or {}), **annotations}
    plugin = pod["spec"]["containers"][0]
    plugin["image"] = image
    plugin["imagePullPolicy"] = pull_policy
    if command is not None:
        plugin["command"] = list(command)
    if args is not None:
        plugin["args"] = list(args)
    plugin["env"] = merge(plugin.get("env") or [], [{"name": k, "value": v} for k, v in env.items()
                                                    if k not in _HOST_ONLY_ENV])
    ports = [p for p in plugin.get("ports") or [] if p.get("containerPort") != container_port]
    plugin["ports"] = [{"name": "plugbay-grpc", "containerPort": container_port, "protocol": "TCP"}, *ports]
    return pod


# --- reading a pod's status ----------------------------------------------------


def plugin_status(pod: Json) -> Json:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER_NAME:
            return dict(cs)
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return dict(statuses[0]) if statuses else {}


def phase(pod: Json) -> str:
    return str((pod.get("status") or {}).get("phase") or "Unknown")


def is_running(pod: Json) -> bool:
    return phase(pod) == "Running" and "running" in (plugin_status(pod).get("state") or {})


def exit_code(pod: Json) -> int | None:
    """The plugin container's exit code once it terminated (and will not restart)."""
    state = plugin_status(pod).get("state") or {}
    term = state.get("terminated")
    if term is not None:
        return int(term.get("exitCode", -1))
    if (state.get("waiting") or {}).get("reason") == "CrashLoopBackOff":
        # restartPolicy let it restart, but the plugin the host started is gone
        last = (plugin_status(pod).get("lastState") or {}).get("terminated")
        if last:
            return int(last.get("exitCode", -1))
    if phase(pod) in ("Succeeded", "Failed"):
        last = (plugin_status(pod).get("lastState") or {}).get("terminated")
        return int(last.get("exitCode", -1)) if last else -1
    return None


def start_failure(pod: Json, name: str, log_tail: Sequence[str], events: Sequence[str]) -> Exception | None:
    """The error to raise when the pod can no longer come up, or None while it still may."""
    status = pod.get("status") or {}
    diag = "\n".join(["Pod events:", *("    " + e for e in events)]) if events else ""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" \
                and cond.get("reason") == "Unschedulable":
            return PodUnschedulableError(
                f"pod {name} cannot be scheduled: {cond.get('message', '')}. Check the runner's"
                " node_selector, tolerations and resources against the cluster's nodes"
                f" (kubectl describe pod {name}).\n{diag}")
    cs = plugin_status(pod)
    waiting = (cs.get("state") or {}).get("waiting") or {}
    reason, message = waiting.get("reason", ""), waiting.get("message", "")
    image = cs.get("image") or pod["spec"]["containers"][0].get("image", "?")
    if reason in PULL_FAILURES:
        return ImageNotFoundError(
            f"pod {name} cannot pull image {image!r} ({reason}: {message}). Check the image name"
            " and tag, that the cluster's nodes can reach the registry, and imagePullSecrets"
            f" (via pod_template) for a private registry.\n{diag}")
    if reason in CONFIG_FAILURES:
        return ConfigError(
            f"pod {name} cannot start its container ({reason}: {message}). With runAsNonRoot the"
            " image must run as a numeric non-root user: set USER 10001 in the image or pass"
            f" run_as_user=<uid> to KubernetesRunner.\n{diag}")
    if reason == "CrashLoopBackOff":
        last = (cs.get("lastState") or {}).get("terminated") or {}
        return PodCrashLoopError(name, last.get("exitCode"), log_tail,
                                 f"Pod {name} is in CrashLoopBackOff after {cs.get('restartCount', 0)}"
                                 f" restarts (last termination: {last.get('reason', '?')}).\n{diag}")
    code = exit_code(pod)
    if code is not None:
        term = ((cs.get("state") or {}).get("terminated") or {})
        return PluginExitedError(name, code, log_tail,
                                 f"Pod {name} ended in phase {phase(pod)} (reason:"
                                 f" {term.get('reason', '?')}).\n{diag}")
    return None


def describe(pod: Json | None, gone: bool, events: Sequence[str], log_tail: Sequence[str]) -> str:
    """A diagnosis: phase, the container's state, restarts and last termination, events, logs."""
    out: list[str] = []
    if pod is None:
        out.append("pod: not found (never created, or deleted)")
    else:
        meta = pod.get("metadata") or {}
        out.append(f"pod {meta.get('namespace')}/{meta.get('name')}: phase {phase(pod)}"
                   + (" (deleted)" if gone else "")
                   + (" (being deleted)" if meta.get("deletionTimestamp") and not gone else ""))
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("status") == "False" and cond.get("reason"):
                out.append(f"  condition {cond['type']}: {cond['reason']} {cond.get('message', '')}")
        cs = plugin_status(pod)
        if cs:
            for label, key in (("state", "state"), ("last state", "lastState")):
                for kind, detail in (cs.get(key) or {}).items():
                    facts = ", ".join(f"{k}={v}" for k, v in sorted(detail.items())
                                      if k in ("reason", "exitCode", "message", "signal"))
                    out.append(f"  container {label}: {kind}" + (f" ({facts})" if facts else ""))
            out.append(f"  restarts: {cs.get('restartCount', 0)}")
    if events:
        out.append("recent events:")
        out += ["  " + e for e in events[-10:]]
    if log_tail:
        out.append("last log lines:")
        out += ["  " + line for line in log_tail[-20:]]
    return "\n".join(out)


def pod_address(pod: Json, port: int, pod_id: str) -> str:
    """Where the host dials the pod's ``port`` in-cluster: the pod IP, or the node's IP for a hostPort."""
    status = pod.get("status") or {}
    # A hostPort on the container port means the pod is reached on its node's IP.
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("containerPort") == port and p.get("hostPort"):
                # ports[].hostIP is the node's bind address: an unspecified one (every node address), dialled,
                # is the host's own machine; status.hostIP is the node's
                host = p.get("hostIP") or ""
                if _unspecified(host):
                    host = status.get("hostIP") or ""
                if not host:
                    raise RunnerError(f"pod {pod_id} has no node IP yet (phase {phase(pod)}) for its hostPort"
                                      f" {p['hostPort']}; it cannot be dialled")
                return _join(host, int(p["hostPort"]))
    ip = status.get("podIP")
    if not ip:
        raise RunnerError(f"pod {pod_id} has no IP yet (phase {phase(pod)}); it cannot be dialled")
    return _join(ip, port)


def _unspecified(host: str) -> bool:
    try:
        return not host or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_event(ev: Json) -> str:
    return (f"{ev.get('type', '')} {ev.get('reason', '')}: {ev.get('message', '')}"
            + (f" (x{ev['count']})" if (ev.get("count") or 1) > 1 else ""))
