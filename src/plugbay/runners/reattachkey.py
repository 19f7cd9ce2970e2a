"""The reattach secret of a container or pod: proof that reattach data is the one plugbay wrote for it.

A container id or pod name is no secret (whoever may list containers or pods reads it), so reattach
data that names one proves nothing, and a label such as ``plugbay.managed=true`` is on every plugin
of every host. At create each container and pod gets a random secret of its own; its labels (a pod:
an annotation, as a label value is at most 63 characters) hold only the secret's SHA-256 digest, so
reading them does not reveal it, and reattach_data() carries the secret itself. A reattach touches
nothing before the data's secret matches that digest, as the process runner's reattach touches no
process before its random PLUGBAY_PLUGIN_ID and start time match (runners.attached).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from typing import Any

from plugbay.errors import ReattachError

DIGEST = "plugbay.reattach-digest"  # the label (a pod's annotation) holding digest(secret)
SECRET = "reattach_secret"  # the reattach data's field holding the secret
_SECRET_FORM = re.compile(r"[0-9a-f]{64}")  # new_secret()'s: 256 random bits in hex


def new_secret() -> str:
    """A random secret for one container or pod."""
    return secrets.token_hex(32)


def digest(secret: str) -> str:
    """What the label (annotation) holds: a one-way digest, so the secret cannot be read back from it."""
    return "sha256:" + hashlib.sha256(secret.encode("ascii")).hexdigest()


def secret_unproven(data: Mapping[str, Any], recorded: Any, what: str, where: str, remove: str) -> ReattachError | None:
    """The refusal of reattach ``data`` that cannot be proven the data plugbay wrote for ``what`` (a container
    or pod) whose ``where`` (label, annotation) is ``recorded``; None when it can. No secret, a secret of
    another form and a wrong one are refused alike, and the comparison takes the same time wherever the
    digests differ. ``remove`` is how a user ends ``what`` by hand (a command)."""
    if not isinstance(recorded, str) or not recorded:
        # nothing to compare with: a plugbay from before reattach secrets started it (or something else
        # did), and no JSON can prove itself for it; the way out is a new start, not other JSON
        return ReattachError(
            f"cannot reattach to {what}: it carries no {DIGEST} {where}, which every plugin a current plugbay"
            " starts has (plugbay before reattach secrets did not write one), so no reattach data can prove it"
            f" is the one plugbay made and plugbay leaves {what} alone. Stop it from the host that started it,"
            f" or end it by hand (`{remove}`), and start the plugin again")
    secret = data.get(SECRET)
    if not isinstance(secret, str) or not _SECRET_FORM.fullmatch(secret):
        why = f"the reattach data has no {SECRET!r} (plugbay writes one into every reattach JSON it makes)"
    elif not hmac.compare_digest(digest(secret).encode("ascii"), recorded.encode("utf-8", "replace")):
        why = f"the data's {SECRET!r} is not the one plugbay made for it"
    else:
        return None
    return ReattachError(
        f"cannot reattach to {what}: {why}, so this reattach data is not the one plugbay wrote for {what}, and"
        " plugbay leaves it alone. Pass the JSON that Client.reattach_config().to_json() produced for that"
        " plugin, unedited; to remove plugins whose host is gone, use `plugbay sweep`")


def secret_of(data: Mapping[str, Any]) -> str:
    """The data's secret once proven (attach() keeps it: the attached runner's reattach_data() carries it on)."""
    return str(data.get(SECRET) or "")
