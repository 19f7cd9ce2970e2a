"""The RBAC rules plugbay's Kubernetes code needs, and the 403 message that names them.

The Helm chart's Role, the README's table and the PermissionDeniedError text
are all checked against these constants.
"""

from __future__ import annotations

# Every API call the runner makes, as RBAC rules (core API group ""). The
# Helm chart's Role, the 403 message and the README are checked against this.
RBAC_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pods", ("create", "delete", "get", "list", "watch")),
    ("pods/log", ("get",)),
    ("pods/portforward", ("create", "get")),  # the WebSocket upgrade is checked as both
    ("events", ("list",)),
)
# What network mode's kubernetes:/// discovery (plugbay.network.kubernetes) calls, as
# (API group, resource, verbs). A separate Role rule: only hosts that discover need it.
DISCOVERY_RBAC_RULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("discovery.k8s.io", "endpointslices", ("list", "watch")),  # it never reads one slice by name
)


def rbac_summary() -> str:
    return "; ".join(f"{res}: {', '.join(verbs)}" for res, verbs in RBAC_RULES)


def discovery_rbac_summary() -> str:
    return "; ".join(f"{res}: {', '.join(verbs)}" for _, res, verbs in DISCOVERY_RBAC_RULES)


def denied_message(verb: str, resource: str, namespace: str) -> str:
    return (f"the Kubernetes API refused to {verb} {resource} in namespace {namespace!r} (403 Forbidden)."
            " plugbay's KubernetesRunner needs a Role in that namespace (charts/plugbay installs it)"
            f" bound to the host's service account or user, granting in API group \"\": {rbac_summary()}")
