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
from plugbay.errors import ConfigError
from plugbay.runners.docker import sweep_images
from tests.cli_util import plugbay
from tests.engine_relay import EngineRelay, relay  # noqa: F401  (relay is a fixture)
from tests.race_util import Starting

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
        # (3600 s: far beyond this test's length)
        assert replaced not in sweep_images(client=plugbay_docker, dry_run=True, grace=3600)
        spared: dict[str, str] = {}
        assert replaced not in sweep_images(client=plugbay_docker, ids=[replaced], spared=spared, grace=3600)
        assert _exists(plugbay_docker, replaced) and "within the 3600 s grace" in spared[replaced], spared
        listed = json.loads(plugbay("sweep", "--docker", "--dry-run", "--json", "--grace", "3600").stdout)
        assert replaced not in listed["docker_images"] and "grace" in listed["left"][replaced], listed  # it says so
        said = plugbay("sweep", "--docker", "--dry-run", "--grace", "3600").stdout  # the id once, as `docker images`
        assert f"left {replaced[7:19]}: image: made " in said and said.count(replaced[7:19]) == 1, said
        assert replaced in sweep_images(client=plugbay_docker, dry_run=True, grace=0)
        # ids= narrows to those images: this one is sweepable, and goes only when named, by its full id
        assert sweep_images(client=plugbay_docker, dry_run=True, ids=[], grace=0) == []
        assert sweep_images(client=plugbay_docker, dry_run=True, ids=[replaced[7:]], grace=0) == [replaced]
        with pytest.raises(ConfigError, match="full image ids"):  # the CLI's 12 digits would match nothing
            sweep_images(client=plugbay_docker, dry_run=True, ids=[replaced[7:19]], grace=0)
        listed = json.loads(plugbay("sweep", "--docker", "--dry-run", "--json", "--grace", "0").stdout)
        assert replaced in listed["docker_images"] and listed["count"] >= 1, listed
        assert _exists(plugbay_docker, replaced)  # a dry run removes nothing
        # `plugbay sweep`'s, scoped to this test's image (an unscoped one with grace 0 would take other builds' too)
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


@pytest.mark.timeout(300)
def test_an_image_tagged_again_while_the_sweep_looks_at_it_stays(relay: EngineRelay, plugbay_docker: Any,
                                                                tmp_path: Path) -> None:
    # A rebuild that hits the builder's cache tags the old image again, whose Created stays old: the sweep had
    # judged it untagged, and the engine removes an image of one tag by its id without asking (it untags it)
    tag = TAG + "-again"
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    made: list[str] = []
    user: Any = None
    try:
        for version in ("v1", "v2"):
            (plugin / "main.py").write_text(f"print('{version}')\n")
            made.append(images.build_plugin_image(tag, plugin, ["python", "/plugin/main.py"],
                                                  progress=lambda _: None, client=plugbay_docker))
            if user is None:  # holds the first image, which the second build then leaves untagged
                user = plugbay_docker.containers.create(tag, network_mode="none")
        user.remove(force=True)
        user = None
        old = made[0]
        assert plugbay_docker.images.get(old).tags == []
        relay.hold("GET", "/images/[^/ ]+/history")  # the sweep's look at it, after its first inspect
        swept: list[str] = []
        sweeping = Starting(lambda: swept.extend(sweep_images(ids=[old], grace=0)))  # through the relay
        try:
            assert relay.holding.wait(60), "the sweep never read the image's history"
            plugbay_docker.images.get(old).tag(tag + "-cached")
        finally:
            relay.release()
        assert sweeping.outcome(60) is None
        assert swept == [] and _exists(plugbay_docker, old), "the sweep removed an image tagged again meanwhile"
        assert plugbay_docker.images.get(old).tags == [tag + "-cached"]
    finally:
        if user is not None:
            user.remove(force=True)
        for image in (tag, tag + "-cached", *made):
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
