"""The RBAC rules plugbay's Kubernetes code needs, and the 403 message that names them.

The Helm chart's Role, the README's table and the PermissionDeniedError text
are all checked against these constants.
"""

from __future__ import annotations

import re

from plugbay.errors import ConfigError, PermissionDeniedError

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


# The authorizer's words, for any verb: "cannot create resource", "cannot impersonate resource" (a
# kubeconfig's as: user the host may not act as), ...
_AUTHORIZER = re.compile(r"cannot \S+ resource")


def forbidden(verb: str, resource: str, namespace: str, message: str | None) -> ConfigError | PermissionDeniedError:
    """The error for a 403 whose Status said ``message`` (None: no Status body, e.g. a proxy's page).

    The authorizer (RBAC, a webhook) always says "cannot <verb> resource"; a 403 on the pod's create saying
    anything else is an admission refusal (ResourceQuota, LimitRange, PodSecurity, a namespace being deleted):
    more Role rules would not help, the pod must change, so it is a ConfigError led by the server's words.
    Any other call's 403 (a webhook refusing a delete) stays a PermissionDeniedError: no pod setting helps it."""
    if message is not None and not _AUTHORIZER.search(message):
        if (verb, resource) == ("create", "pods"):
            return ConfigError(f"{message} -- the Kubernetes API refused to {verb} {resource} in namespace"
                               f" {namespace!r} (403 Forbidden, not for missing RBAC rules: an admission check"
                               " refused it). " + _admission_advice(message, namespace))
        return PermissionDeniedError(f"the Kubernetes API refused to {verb} {resource} in namespace {namespace!r}"
                                     f" (403 Forbidden, not for missing RBAC rules). Server said: {message}")
    return PermissionDeniedError(denied_message(verb, resource, namespace)
                                 + (f". Server said: {message}" if message else ""))


def _admission_advice(message: str, namespace: str) -> str:
    said = message.lower()
    if "podsecurity" in said:
        return (f"The pod breaks namespace {namespace!r}'s Pod Security level (its label"
                " pod-security.kubernetes.io/enforce): give the pod what the message names through"
                " KubernetesRunner pod_template= (spec.securityContext and the plugin container's securityContext,"
                " e.g. runAsNonRoot, seccompProfile RuntimeDefault, capabilities drop ALL) and run_as_user=,"
                " or run plugins in a namespace whose level allows the pod")
    if "exceeded quota" in said:
        return (f"namespace {namespace!r}'s ResourceQuota is used up: free some of it, raise it, or ask for less"
                " with KubernetesRunner resources= (kubectl describe resourcequota -n " + namespace + ")")
    if "quota" in said or "usage per" in said or "limitrange" in said:
        return ("Set KubernetesRunner resources= to what namespace " + repr(namespace) + "'s ResourceQuota or"
                " LimitRange asks, e.g. resources={'requests': {'cpu': '100m', 'memory': '64Mi'}, 'limits':"
                " {'cpu': '500m', 'memory': '128Mi'}} (kubectl describe resourcequota,limitrange -n "
                + namespace + ")")
    if "error looking up service account" in said:
        return (f"The pod's service account is missing in namespace {namespace!r}: create it there, or name one"
                " that exists with KubernetesRunner service_account=")
    if "being terminated" in said:
        return f"Namespace {namespace!r} is being deleted: run plugins in another one (KubernetesRunner namespace=)"
    return ("An admission controller or webhook refused the pod: change it as the message asks, through"
            " KubernetesRunner resources=, run_as_user= or pod_template=")
