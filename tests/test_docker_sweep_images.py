"""The sweep of the images plugbay built that no tag names and no container uses any more: a rebuild
keeps the image it took the tag from while a container (a stopped one too) uses it, and that image
stayed behind as <none> once the container was gone."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from docker.errors import ImageNotFound

from plugbay import images
from plugbay.runners.docker import sweep_images
from tests.cli_util import plugbay

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
        assert replaced not in sweep_images(client=plugbay_docker, dry_run=True, grace=0)
        assert replaced not in sweep_images(client=plugbay_docker, ids=[replaced], grace=0)
        assert _exists(plugbay_docker, replaced)
        user.remove(force=True)
        user = None
        # built moments ago: a build's image is untagged until its tag is set, so one within the grace stays
        assert replaced not in sweep_images(client=plugbay_docker, dry_run=True)
        spared: dict[str, str] = {}
        assert replaced not in sweep_images(client=plugbay_docker, ids=[replaced], spared=spared)
        assert _exists(plugbay_docker, replaced) and "within the 60 s grace" in spared[replaced], spared
        listed = json.loads(plugbay("sweep", "--docker", "--dry-run", "--json").stdout)  # the command says so
        assert replaced not in listed["docker_images"] and "grace" in listed["left"][replaced], listed
        assert replaced in sweep_images(client=plugbay_docker, dry_run=True, grace=0)
        listed = json.loads(plugbay("sweep", "--docker", "--dry-run", "--json", "--grace", "0").stdout)
        assert replaced in listed["docker_images"] and listed["count"] >= 1, listed
        assert _exists(plugbay_docker, replaced)  # a dry run removes nothing
        # `plugbay sweep`'s (after the containers of gone hosts), scoped to this test's image
        assert sweep_images(client=plugbay_docker, ids=[replaced], grace=0) == [replaced]
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
        assert foreign not in sweep_images(client=plugbay_docker, dry_run=True, grace=0)
        assert foreign not in sweep_images(client=plugbay_docker, ids=[foreign], grace=0)
        assert _exists(plugbay_docker, foreign)
    finally:
        plugbay_docker.images.remove(foreign, force=True)


def test_an_untagged_image_built_from_a_plugbay_image_is_left_alone(plugbay_docker: Any, tmp_path: Path) -> None:
    # it inherits plugbay's content-hash label, as each step of a build FROM a plugbay image does: the
    # sweep removed a user's untagged build, and an intermediate image under a running classic build
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "main.py").write_text("print('v1')\n")
    made: list[str] = []
    try:
        made.append(images.build_plugin_image(TAG, plugin, ["python", "/plugin/main.py"], progress=lambda _: None,
                                              client=plugbay_docker))
        recipe = f'FROM {TAG}\nENV USERS_OWN=1\n'
        child, _ = plugbay_docker.images.build(fileobj=io.BytesIO(recipe.encode()), rm=True, pull=False,
                                               network_mode="none")
        made.insert(0, str(child.id))
        assert child.tags == [] and child.labels.get(images.HASH_LABEL)  # untagged, the label inherited
        assert child.id not in sweep_images(client=plugbay_docker, dry_run=True, grace=0)
        assert child.id not in sweep_images(client=plugbay_docker, ids=[child.id], grace=0)
        assert _exists(plugbay_docker, child.id)
    finally:
        for image in (*made, TAG):
            try:
                plugbay_docker.images.remove(image, force=True)
            except ImageNotFound:
                pass
