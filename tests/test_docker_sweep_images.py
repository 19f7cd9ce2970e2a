"""The sweep of the images plugbay built that no tag names and no container uses any more: a rebuild
keeps the image it took the tag from while a container (a stopped one too) uses it, and that image
stayed behind as <none> once the container was gone."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from docker.errors import ImageNotFound

from plugbay import images
from plugbay.runners.docker import sweep, sweep_images

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("plugbay_docker")]

TAG = "plugbay-sweep-images-test:latest"


def _exists(docker: Any, image_id: str) -> bool:
    try:
        docker.images.get(image_id)
    except ImageNotFound:
        return False
    return True


def _untagged(docker: Any) -> str:
    """An image of base layers only, no label of plugbay's, that no tag names (a second build took its tag)."""
    built = []
    for which in ("first", "second"):
        recipe = f'FROM {images.BASE_IMAGE}\nLABEL plugbay-test-build="{which}"\n'
        image, _ = docker.images.build(fileobj=io.BytesIO(recipe.encode()), tag=TAG + "-untagged", rm=True,
                                       pull=False, network_mode="none")
        built.append(str(image.id))
    docker.images.remove(TAG + "-untagged")  # the second, by its tag; the first stays, untagged
    return built[0]


def test_an_image_a_rebuild_replaced_goes_with_the_sweep_once_its_last_container_is_gone(
        plugbay_docker: Any, tmp_path: Path) -> None:
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "main.py").write_text("print('v1')\n")
    made: list[str] = []
    user: Any = None
    try:
        made.append(images.build_plugin_image(TAG, plugin, ["python", "/plugin/main.py"], progress=lambda _: None,
                                              client=plugbay_docker))
        user = plugbay_docker.containers.create(TAG, network_mode="none")  # stopped: it still holds the image
        (plugin / "main.py").write_text("print('v2')\n")
        made.append(images.build_plugin_image(TAG, plugin, ["python", "/plugin/main.py"], progress=lambda _: None,
                                              client=plugbay_docker))
        replaced = made[0]
        assert plugbay_docker.images.get(replaced).tags == []  # kept for its container: untagged now
        # while the container is there, neither a dry run nor a sweep counts it, and it stays
        assert replaced not in sweep_images(client=plugbay_docker, dry_run=True)
        assert replaced not in sweep_images(client=plugbay_docker)
        assert _exists(plugbay_docker, replaced)
        user.remove(force=True)
        user = None
        assert replaced in sweep_images(client=plugbay_docker, dry_run=True)
        assert _exists(plugbay_docker, replaced)  # a dry run removes nothing
        sweep()  # `plugbay sweep`'s: the containers of gone hosts, then such images
        assert not _exists(plugbay_docker, replaced)
        assert plugbay_docker.images.get(TAG).id == made[1]  # the tagged one is untouched
    finally:
        if user is not None:
            user.remove(force=True)
        for image in (TAG, *made):
            try:
                plugbay_docker.images.remove(image, force=True)
            except ImageNotFound:
                pass


def test_an_untagged_image_plugbay_did_not_build_is_left_alone(plugbay_docker: Any) -> None:
    foreign = _untagged(plugbay_docker)
    try:
        assert plugbay_docker.images.get(foreign).tags == []
        assert foreign not in sweep_images(client=plugbay_docker, dry_run=True)
        assert foreign not in sweep_images(client=plugbay_docker)
        assert _exists(plugbay_docker, foreign)
    finally:
        plugbay_docker.images.remove(foreign, force=True)
