"""The images a plugin image build leaves behind, removed (plugbay.images): the image a rebuild took the
tag from, and the last finished step of a failed build. The engine keeps both as <none>:<none> otherwise."""

from __future__ import annotations

from typing import Any

from plugbay.imagesteps import Progress
from plugbay.runners.docker.engine import engine_failures
from plugbay.runners.docker.sweep import BUILT


def drop_replaced(client: Any, tag: str, image_id: str, progress: Progress) -> None:
    """Remove a plugin image a rebuild took the tag from (else each rebuild leaves one <none>:<none>): only one
    of plugbay's builds (the content-hash label) that no tag names any more; one a container still uses stays."""
    from docker.errors import ImageNotFound

    try:
        old = client.images.get(image_id)
        if old.tags or BUILT not in (old.labels or {}):
            return
        client.images.remove(image_id)
        progress(f"{tag}: removed the image it replaced ({image_id[7:19]})")
    except ImageNotFound:
        pass
    except engine_failures() as exc:  # 409: a container (or another image) still uses it; the build succeeded
        progress(f"{tag}: kept the image it replaced ({image_id[7:19]}): {getattr(exc, 'explanation', None) or exc}")


def drop_failed_step(client: Any, tag: str, image_id: str, progress: Progress) -> None:
    """Remove the image of the last step a failed (or cut short) build finished: forcerm removes the failed
    step's container, not that image, and each failed build left one <none>:<none>. One a tag names, a later
    step or a container uses (the engine's conflict) stays."""
    from docker.errors import ImageNotFound

    try:
        if client.images.get(image_id).tags:
            return
        client.images.remove(image_id)
        progress(f"{tag}: removed the image the failed build left ({image_id})")
    except ImageNotFound:
        pass
    except engine_failures() as exc:
        progress(f"{tag}: kept the image the failed build left ({image_id}):"
                 f" {getattr(exc, 'explanation', None) or exc}")
