"""Where the host dials a pod in-cluster (its IP, or its node's for a hostPort), checked as discovery checks
the replicas it dials: the address is the Kubernetes API's answer, so one that can be no pod's or node's
(loopback without the opt-in, link-local metadata, unspecified, a name) is refused, not dialled.

Kept apart from pods.py (manifests and pod status) so each reads on its own.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from plugbay.core.protocol.addresses import Problem, peer_refusal
from plugbay.errors import RunnerError
from plugbay.runners.kubernetes.pods import Json, json_object, json_objects, phase


def pod_address(pod: Json, port: int, pod_id: str, *, allow_loopback: bool = False, reattached: bool = False) -> str:
    """Where the host dials the pod's ``port`` in-cluster: the pod IP, or the node's IP for a hostPort.

    The address is the API server's answer, checked as discovery checks an EndpointSlice's: an IP
    (a name would be resolved when dialled, past any check), and one that may be a pod's or a node's
    (not unspecified, multicast, broadcast or link-local, where clouds serve instance metadata, nor
    AWS's IPv6 metadata fd00:ec2::/64; IPv4-mapped, NAT64 and 6to4 addresses are checked as the IPv4
    address they reach; nor loopback, the host's own services, unless ``allow_loopback``: a stand-in
    API on one machine). ``reattached``: the runner is KubernetesRunner.attach's (the advice names its opt-in)."""
    status = json_object(pod.get("status"))
    # A hostPort on the container port means the pod is reached on its node's IP.
    for c in json_objects(json_object(pod.get("spec")).get("containers")):
        for p in json_objects(c.get("ports")):
            if p.get("containerPort") == port and p.get("hostPort"):
                host_port = p["hostPort"]
                if isinstance(host_port, bool) or not isinstance(host_port, int) or not 0 < host_port < 65536:
                    raise RunnerError(f"pod {pod_id} names hostPort {host_port!r:.80} for port {port}, which is"
                                      " no TCP port; it cannot be dialled")
                # ports[].hostIP is the node's bind address: an unspecified one (every node address), dialled,
                # is the host's own machine; status.hostIP is the node's
                host = p.get("hostIP") or ""
                if _unspecified(host):
                    host = status.get("hostIP") or ""
                if not host:
                    raise RunnerError(f"pod {pod_id} has no node IP yet (phase {phase(pod)}) for its hostPort"
                                      f" {host_port}; it cannot be dialled")
                return _join(_dialable(host, "its node IP", pod_id, allow_loopback, reattached), host_port)
    ip = status.get("podIP")
    if not ip:
        raise RunnerError(f"pod {pod_id} has no IP yet (phase {phase(pod)}); it cannot be dialled")
    return _join(_dialable(ip, "status.podIP", pod_id, allow_loopback, reattached), port)


def _dialable(text: Any, what: str, pod_id: str, allow_loopback: bool,
              reattached: bool) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        ip = ipaddress.ip_address(text) if isinstance(text, str) else None
    except ValueError:
        ip = None
    if ip is None:
        raise RunnerError(f"pod {pod_id}: the Kubernetes API gave {what} {text!r:.80}, which is no IP address;"
                          " plugbay dials only an IP it can check (a name would be resolved when dialled)")
    why = _refusal(ip, allow_loopback, reattached)
    if why:
        raise RunnerError(f"pod {pod_id}: the Kubernetes API gave {what} {ip}, which {why}; plugbay does not"
                          " dial it. Check the pod (kubectl get pod -o wide) and the API server the kubeconfig"
                          " names")
    return ip


# the opt-in where the runner is made: a reattach's runner is made by ReattachConfig's attach, not by the host
_OPT_IN = "KubernetesRunner(allow_loopback=True)"
_REATTACH_OPT_IN = ("ReattachConfig.from_json(text, attach=functools.partial(KubernetesRunner.attach,"
                    " allow_loopback=True))")


def _pod_words(problem: Problem, reattached: bool = False) -> str:
    if problem is Problem.ZONE_INDEX:
        return "carries a zone index (%...), which names an interface of this host, not a pod"
    if problem is Problem.LOOPBACK:
        return (f"is a loopback address, this host's own (pass {_REATTACH_OPT_IN if reattached else _OPT_IN} only"
                " for an API stand-in that runs pods on this machine)")
    return f"cannot be a pod's ({problem.value})"


def _refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_loopback: bool, reattached: bool = False) -> str:
    """Why ``ip`` is no pod's or node's address; "" if it may be one (the check discovery makes of the
    replicas it dials: plugbay.core.protocol.addresses.peer_refusal)."""
    why = peer_refusal(ip, allow_loopback=allow_loopback)
    return "" if why is None else why.worded(lambda problem: _pod_words(problem, reattached))


def _unspecified(host: Any) -> bool:
    try:
        return not host or ipaddress.ip_address(host).is_unspecified
    except (ValueError, TypeError):
        return False


def _join(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
