"""Builds the stand-in tests' small workload image from the local base image (no pulls)."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
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


KVTRAP_TAG = "plugbay-kube-kvtrap:latest"
_REPO = Path(__file__).resolve().parents[2]


def kvtrap_image() -> str:
    """The KV plugin with trap keys (kvtrap/plugin.py), built with Dockerfile.plugin via plugbay.images."""
    from plugbay.images import build_plugin_image

    with tempfile.TemporaryDirectory(prefix="plugbay-kvtrap-") as tmp:
        folder = Path(tmp) / "plugin"
        folder.mkdir()
        shutil.copy2(Path(__file__).parent / "kvtrap" / "plugin.py", folder / "plugin.py")
        shutil.copy2(_REPO / "examples" / "kv" / "kv_plugin_def.py", folder / "kv_plugin_def.py")
        shutil.copytree(_REPO / "examples" / "kv" / "kvproto", folder / "kvproto",
                        ignore=shutil.ignore_patterns("__pycache__"))
        build_plugin_image(KVTRAP_TAG, folder, ["python", "/plugin/plugin.py"], progress=lambda _l: None)
    return KVTRAP_TAG
