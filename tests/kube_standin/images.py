"""Builds the stand-in tests' small workload image from the local base image (no pulls)."""

from __future__ import annotations

import hashlib
from pathlib import Path

BASE_IMAGE = "plugbay-base:bookworm"
_HERE = Path(__file__).parent / "testapp"


def testapp_image() -> str:
    """Return the tag of the testapp image, building it when its sources changed."""
    import docker

    digest = hashlib.sha256()
    for name in ("Dockerfile", "app.py"):
        digest.update((_HERE / name).read_bytes())
    tag = f"plugbay-kube-testapp:{digest.hexdigest()[:12]}"
    client = docker.from_env(version="auto", timeout=300)
    try:
        try:
            client.images.get(tag)
        except docker.errors.ImageNotFound:
            client.images.build(path=str(_HERE), tag=tag, buildargs={"BASE_IMAGE": BASE_IMAGE},
                                rm=True, forcerm=True, pull=False,
                                labels={"plugbay.test-image": "kube-testapp"})
        return tag
    finally:
        client.close()
