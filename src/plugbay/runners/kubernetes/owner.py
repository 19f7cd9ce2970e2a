"""Who owns a plugin pod: the host's own pod (in-cluster) and a host identity for the sweep.

A host that runs in the cluster learns its pod from the downward API
(``POD_NAME``, ``POD_UID``, ``POD_NAMESPACE``; charts/plugbay sets them). Its
plugin pods then carry an ``ownerReferences`` entry to it, so the cluster's
garbage collector deletes them when the host pod goes, whatever happened to
the host process. An owner reference is only set in the host pod's own
namespace: across namespaces the collector would treat the owner as missing
and delete the plugin at once.

The sweep needs a key that survives a restart of the host's container (same
pod, new process): ``plugbay.host-id``, the host's identity: ``host_id=`` of
the runner, else ``PLUGBAY_HOST_ID``, else the host pod's UID. A sweep by a
host with an identity removes the pods of that identity left by its earlier
incarnations (any session but its own).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from plugbay.errors import ConfigError

HOST_ID = "plugbay.host-id"
ENV_HOST_ID = "PLUGBAY_HOST_ID"


def host_identity(explicit: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if env is None else env
    value = explicit or env.get(ENV_HOST_ID) or env.get("POD_UID") or None
    if value is not None and not _label_ok(value):
        raise ConfigError(f"host identity {value!r} is not a valid label value (at most 63 of"
                          " [A-Za-z0-9-_.], alphanumeric at both ends); pass host_id= or set"
                          f" {ENV_HOST_ID} to one")
    return value


def owner_reference(namespace: str, env: Mapping[str, str] | None = None) -> dict[str, object] | None:
    """The host pod as the owner of a plugin pod in ``namespace``, or None outside a pod."""
    env = os.environ if env is None else env
    name, uid, pod_ns = env.get("POD_NAME"), env.get("POD_UID"), env.get("POD_NAMESPACE")
    if not (name and uid and pod_ns == namespace):
        return None
    return {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid,
            "controller": False, "blockOwnerDeletion": False}


def _label_ok(value: str) -> bool:
    import re

    return len(value) <= 63 and re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?", value) is not None
