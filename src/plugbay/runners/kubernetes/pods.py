"""Pod manifests and pod status for the Kubernetes runner (plain dicts in API camelCase).

Kept apart from the runner so the manifest rules (secure defaults, template
merge, what the runner forces) and the reading of a pod's status (what counts
as a start failure, the exit code, a diagnosis) can be read on one screen each.
"""

from __future__ import annotations

import copy
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from plugbay.core.protocol.exits import not_run_advice
from plugbay.core.protocol.hclog import shown_line
from plugbay.errors import (
    ConfigError,
    ImageNotFoundError,
    PluginExitedError,
    PodCrashLoopError,
    PodFailedError,
    PodUnschedulableError,
    printable,
)
from plugbay.runners.base import HOST_FOLDER_VARIABLES
from plugbay.runners.kubernetes.options import check_template

CONTAINER_NAME = "plugin"
PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
CONFIG_FAILURES = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")

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
    """The pod: secure defaults, then the user's template over them, then what the runner needs.

    ``template`` passed options.check_template and check_namespace (KubernetesRunner checks a copy of
    its pod_template when made): its restartPolicy, if any, is Never, its metadata.namespace the one the
    create names. Those rules are options.py's alone; a template that breaks one is refused, not rewritten."""
    check_template(template)  # a pod that could restart is never built, whoever calls
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
                                                    if k not in HOST_FOLDER_VARIABLES])  # no host folder in a pod
    ports = [p for p in plugin.get("ports") or [] if p.get("containerPort") != container_port]
    plugin["ports"] = [{"name": "plugbay-grpc", "containerPort": container_port, "protocol": "TCP"}, *ports]
    return pod


# --- reading a pod's status ----------------------------------------------------


def json_object(value: Any) -> Json:
    """``value`` if it is a JSON object, else an empty one: a pod read or watched is the API server's
    answer, not trusted to have the shape its schema promises."""
    return value if isinstance(value, dict) else {}


def json_objects(value: Any) -> list[Json]:
    """The JSON objects of a list (others skipped); [] for anything but a list."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _code(value: Any) -> int:
    """An exitCode as the int it should be; -1 for anything else (a string, null, JSON true)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def plugin_status(pod: Json) -> Json:
    statuses = json_objects(json_object(json_object(pod).get("status")).get("containerStatuses"))
    for cs in statuses:
        if cs.get("name") == CONTAINER_NAME:
            return dict(cs)
    return dict(statuses[0]) if statuses else {}


def phase(pod: Json) -> str:
    value = json_object(json_object(pod).get("status")).get("phase")
    return value if isinstance(value, str) and value else "Unknown"


def is_running(pod: Json) -> bool:
    return phase(pod) == "Running" and "running" in json_object(plugin_status(pod).get("state"))


def _terminated(cs: Json, key: str) -> Json | None:
    term = json_object(cs.get(key)).get("terminated")
    return None if term is None else json_object(term)


def exit_code(pod: Json) -> int | None:
    """The plugin container's exit code once it terminated (and will not restart); -1 when it reported none."""
    cs = plugin_status(pod)
    term = _terminated(cs, "state")
    if term is not None:
        return _code(term.get("exitCode"))
    if json_object(json_object(cs.get("state")).get("waiting")).get("reason") == "CrashLoopBackOff":
        # restartPolicy let it restart, but the plugin the host started is gone
        last = _terminated(cs, "lastState")
        if last:
            return _code(last.get("exitCode"))
    if phase(pod) in ("Succeeded", "Failed"):
        last = _terminated(cs, "lastState")
        return _code(last.get("exitCode")) if last else -1
    return None


def start_failure(pod: Json, name: str, log_tail: Sequence[str], events: Sequence[str]) -> Exception | None:
    """The error to raise when the pod can no longer come up, or None while it still may."""
    status = json_object(pod.get("status"))
    # the pod's status and events are the cluster's words (a container's termination message is the
    # plugin's): their controls are escaped before they reach an error message, as plugin output is
    diag = "\n".join(["Pod events:", *("    " + printable(e) for e in events)]) if events else ""
    for cond in json_objects(status.get("conditions")):
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" \
                and cond.get("reason") == "Unschedulable":
            return PodUnschedulableError(
                f"pod {name} cannot be scheduled: {_said(cond.get('message', ''))}. Check the runner's"
                " node_selector, tolerations and resources against the cluster's nodes"
                f" (kubectl describe pod {name}).\n{diag}")
    cs = plugin_status(pod)
    waiting = json_object(json_object(cs.get("state")).get("waiting"))
    reason, message = waiting.get("reason", ""), _said(waiting.get("message", ""))
    containers = json_objects(json_object(pod.get("spec")).get("containers"))
    image = _said(cs.get("image") or (containers[0].get("image", "?") if containers else "?"))
    if reason in PULL_FAILURES:
        return ImageNotFoundError(
            f"pod {name} cannot pull image {image!r} ({reason}: {message}). Check the image name"
            " and tag, that the cluster's nodes can reach the registry, and imagePullSecrets"
            f" (via pod_template) for a private registry.\n{diag}")
    if reason in CONFIG_FAILURES:
        return ConfigError(f"pod {name} cannot start its container ({reason}: {message}). "
                           f"{_config_advice(message, name)}\n{diag}")
    if reason == "CrashLoopBackOff":
        last = _terminated(cs, "lastState") or {}
        return PodCrashLoopError(name, _code(last.get("exitCode")) if "exitCode" in last else None, log_tail,
                                 f"Pod {name} is in CrashLoopBackOff after {cs.get('restartCount', 0)}"
                                 f" restarts (last termination: {_said(last.get('reason', '?'))}).\n{diag}")
    code = exit_code(pod)
    ended = pod_ended(pod)
    if code is not None and ended:
        headline, advice = _ended_advice(status.get("reason"), status.get("message"), name)
        return PodFailedError(name, code, log_tail, f"Pod {name} ended in phase {phase(pod)}:"
                              f" {ended.rstrip('.')}.\n{diag}", advice=advice, headline=headline)
    if code is not None:
        term = _terminated(cs, "state") or {}
        return PluginExitedError(name, code, log_tail,
                                 f"Pod {name} ended in phase {phase(pod)} (reason:"
                                 f" {_said(term.get('reason', '?'))}).\n{diag}", advice=pod_not_run(code, log_tail))
    return None


def pod_not_run(code: int | None, last: Sequence[str]) -> str | None:
    """A shell-form command whose program is not in the image (127) or not executable (126): not the cookie. The
    pod runner's advice, whether the pod's end or its output's end told the host first."""
    return not_run_advice(code, last, "the pod's command", "in the image",
                          "Check the image's ENTRYPOINT/CMD (and the runner's command, if it sets one) and the"
                          " image's PATH: the program must be in the image and executable.")


def _config_advice(message: str, name: str) -> str:
    """What to change for a container the kubelet or its runtime would not create or run: by what the
    cluster said (the runAsNonRoot advice for any of them sent a user after the wrong setting)."""
    if "runAsNonRoot" in message:
        return ("With runAsNonRoot the image must run as a numeric non-root user: set USER 10001 in the image"
                " or pass run_as_user=<uid> to KubernetesRunner.")
    return ("Check what the runner asks for against that message: its image and command (the entrypoint must"
            " exist in the image), resources, writable_dirs and pod_template (kubectl describe pod"
            f" {name}).")


def pod_ended(pod: Json) -> str:
    """Why the cluster ended a failed pod ("Evicted: The node was low on resource: memory. ..."), from its
    status.reason and message, escaped; "" when it says none (the plugin's container ended it)."""
    status = json_object(json_object(pod).get("status"))
    reason, message = status.get("reason"), status.get("message")
    if phase(pod) != "Failed" or not (isinstance(reason, str) and reason):
        return ""
    return _said(reason) + (f": {_said(message)}" if isinstance(message, str) and message else "")


def _ended_advice(reason: Any, message: Any, name: str) -> tuple[str, str]:
    """The headline and advice for a pod the cluster ended: no exit code (its container may never have run)
    and no handshake advice, which would send the reader to the wrong place."""
    told = message.lower() if isinstance(message, str) else ""
    head = f"the cluster ended plugin {name!r}'s pod ({_said(reason)}) before the plugin completed the handshake"
    if reason == "Evicted" and ("ephemeral" in told and "limit" in told or "exceeds the limit" in told):
        # the plugin's own writes passed its limit: a larger request would not have saved it
        what = ("The node evicted the pod because the plugin wrote more to its container's disk or writable_dirs"
                " than its ephemeral-storage limit allows: raise that limit (KubernetesRunner resources=) or make"
                " the plugin write less")
    elif reason == "Evicted":
        what = ("The node evicted the pod to reclaim memory or disk: give the plugin requests that cover its use"
                " (KubernetesRunner resources=), so it is scheduled where that fits and evicted last")
    elif isinstance(reason, str) and (reason.startswith("OutOf") or reason == "UnexpectedAdmissionError"):
        head = f"the cluster refused plugin {name!r}'s pod ({_said(reason)}): its container never ran"
        what = ("The node's kubelet refused the pod at admission (it had not what the pod asks, often a race with"
                " other pods for the node): check KubernetesRunner resources= against the nodes' allocatable")
    else:
        what = "The cluster ended the pod, not the plugin"
    namespace, _, pod = name.rpartition("/")
    return head, (f"{what}; kubectl describe pod -n {namespace} {pod} says more."
                  " Start a new Client to run the plugin again.")


def describe(pod: Json | None, gone: bool, events: Sequence[str], log_tail: Sequence[str]) -> str:
    """A diagnosis: phase, the container's state, restarts and last termination, events, logs."""
    out: list[str] = []
    if pod is None:
        out.append("pod: not found (never created, or deleted)")
    else:
        meta = json_object(pod.get("metadata"))
        out.append(f"pod {meta.get('namespace')}/{meta.get('name')}: phase {phase(pod)}"
                   + (" (deleted)" if gone else "")
                   + (" (being deleted)" if meta.get("deletionTimestamp") and not gone else ""))
        if pod_ended(pod):
            out.append(f"  ended by the cluster: {pod_ended(pod)}")
        for cond in json_objects(json_object(pod.get("status")).get("conditions")):
            if cond.get("status") == "False" and cond.get("reason"):
                out.append(f"  condition {cond.get('type')}: {cond['reason']} {cond.get('message', '')}")
        cs = plugin_status(pod)
        if cs:
            for label, key in (("state", "state"), ("last state", "lastState")):
                for kind, detail in json_object(cs.get(key)).items():
                    facts = ", ".join(f"{k}={v}" for k, v in sorted(json_object(detail).items())
                                      if k in ("reason", "exitCode", "message", "signal"))
                    out.append(f"  container {label}: {kind}" + (f" ({facts})" if facts else ""))
            out.append(f"  restarts: {cs.get('restartCount', 0)}")
    if events:
        out.append("recent events:")
        out += ["  " + e for e in events[-10:]]
    if log_tail:
        out.append("last log lines:")
        out += ["  " + shown_line(line) for line in log_tail[-20:]]  # an hclog entry as "[LEVEL] message"
    # every fact is the cluster's (a termination message, events) or the plugin's (its log): each line's
    # controls escaped, as the process and Docker runners escape theirs, so none can forge a line of the
    # host's log or drive the terminal showing the error
    return "\n".join(printable(line) for line in out)


def _said(value: Any) -> str:
    """A value of the pod's status as text for a message, its controls escaped."""
    return printable(str(value))


def format_event(ev: Json) -> str:
    """One event as a line, its controls escaped (a message may hold a newline, or an ESC)."""
    count = ev.get("count")
    times = count if isinstance(count, int) and not isinstance(count, bool) and count > 1 else None
    return printable(f"{ev.get('type', '')} {ev.get('reason', '')}: {ev.get('message', '')}"
                     + (f" (x{times})" if times else ""))
