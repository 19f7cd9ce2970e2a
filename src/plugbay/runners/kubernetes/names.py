"""Kubernetes object names as the API server checks them (DNS-1123), for options and reattach data.

Checked before any request: a name from untrusted reattach data goes into the API's request path, where
".." or "a/../../secrets/x" would name another path than the pod's."""

from __future__ import annotations

import re
from typing import Any

from plugbay.errors import ReattachError

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
LABEL_RULE = "at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
SUBDOMAIN_RULE = "at most 253 characters of lowercase letters, digits, '-' and '.', each part between dots " + (
    "starting and ending with a letter or digit")


def dns_label(name: str) -> bool:
    """A DNS-1123 label, as Kubernetes names a namespace."""
    return len(name) <= 63 and re.fullmatch(_LABEL, name) is not None


def dns_subdomain(name: str) -> bool:
    """A DNS-1123 subdomain, as Kubernetes names most objects (a pod, a ServiceAccount, a label key's prefix)."""
    return len(name) <= 253 and re.fullmatch(rf"{_LABEL}(\.{_LABEL})*", name) is not None


def reattach_pod(data: Any) -> tuple[str, str]:
    """The (namespace, pod) reattach data names, checked: it is untrusted, so a missing or non-string
    one is a ReattachError rather than a request for a pod named "None"."""
    names = []
    for key in ("namespace", "pod"):
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise ReattachError(f"reattach data for a pod needs {key!r} as a non-empty string, not {value!r};"
                                " pass the JSON that Client.reattach_config().to_json() produced")
        names.append(value)
    namespace, pod = names
    # both go into the API's request path: "..", "a/../../secrets/x" would name another path
    if not dns_label(namespace):
        raise ReattachError(f"reattach data names the namespace {namespace!r:.80}, which is no valid Kubernetes"
                            f" namespace name ({LABEL_RULE}); pass the JSON Client.reattach_config() produced")
    if not dns_subdomain(pod):
        raise ReattachError(f"reattach data names the pod {pod!r:.80}, which is no valid Kubernetes pod name"
                            f" ({SUBDOMAIN_RULE}); pass the JSON Client.reattach_config() produced")
    return namespace, pod
