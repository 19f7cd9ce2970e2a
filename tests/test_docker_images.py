"""plugbay.images: the apt mirror lookup, content-hash caching of plugin images, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from docker.errors import ImageNotFound

from plugbay import images, imagesteps
from plugbay.errors import ConfigError, ImageNotFoundError, RunnerError

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("plugbay_docker")]


def test_apt_mirror_from_deb822_then_sources_list(tmp_path: Path) -> None:
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\n# a comment: line\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
    )
    legacy = tmp_path / "sources.list"
    legacy.write_text("# deb http://old/ bookworm main\ndeb http://legacy.example/debian bookworm main\n")
    assert images.apt_mirror(deb822, legacy) == "http://mirror.example/debian"
    assert images.apt_mirror(tmp_path / "missing", legacy) == "http://legacy.example/debian"
    assert images.apt_mirror(tmp_path / "missing", tmp_path / "missing") == "http://deb.debian.org/debian"


def test_plugin_image_is_built_once_per_content(plugbay_docker: Any, tmp_path: Path) -> None:
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "main.py").write_text("import os, grpc, plugbay; print('v1', os.getuid(), grpc.__version__)\n")
    tag = "plugbay-images-test:latest"
    lines: list[str] = []
    user: Any = None
    changed = ""
    try:
        plugbay_docker.images.remove(tag, force=True)  # left by a run that was killed mid-test
    except ImageNotFound:
        pass
    try:
        first = images.build_plugin_image(tag, plugin, ["python", "/plugin/main.py"], progress=lines.append,
                                          client=plugbay_docker)
        assert any("building" in line for line in lines)
        # the builder without BuildKit builds every stage: the gateway stage's untagged image stayed each time.
        # Only this build's images count (each step's, as its output names them, taken from the cache or not):
        # another user of the engine may leave an untagged image of its own at any moment.
        made = {short for line in lines for short in images._STEP_IMAGE.findall(line.removeprefix(f"{tag}: "))}
        assert made, lines
        left = [image for image in plugbay_docker.images.list(filters={"dangling": True})
                if any(image.id.removeprefix("sha256:").startswith(short) for short in made)]
        assert not left, [image.attrs["Config"]["Entrypoint"] for image in left]
        # Asked again, the image is found up to date. (In a shared work tree another edit to
        # src/plugbay between two calls legitimately rebuilds, so the check allows one retry.)
        for _ in range(2):
            lines.clear()
            again = images.build_plugin_image(tag, plugin, ["python", "/plugin/main.py"],
                                              progress=lines.append, client=plugbay_docker)
            if any("up to date" in line for line in lines):
                break
            first = again
        assert again == first and any("up to date" in line for line in lines), lines
        out = plugbay_docker.containers.run(tag, remove=True, network_mode="none").decode()
        import grpc

        assert out.split() == ["v1", "10001", grpc.__version__]  # non-root, host's grpcio pin
        assert images.HASH_LABEL in plugbay_docker.images.get(tag).labels
        (plugin / "main.py").write_text("print('v2')\n")
        lines.clear()
        changed = images.build_plugin_image(tag, plugin, ["python", "/plugin/main.py"], progress=lines.append,
                                            client=plugbay_docker)
        assert changed != first
        assert plugbay_docker.containers.run(tag, remove=True, network_mode="none").decode() == "v2\n"
        # the image the rebuild took the tag from is removed (it stayed as <none>:<none>, one per rebuild)
        with pytest.raises(ImageNotFound):
            plugbay_docker.images.get(first)
        assert any(line.startswith(f"{tag}: removed the image it replaced") for line in lines), lines
        # one a container still uses stays (the engine's conflict), and the build succeeds
        user = plugbay_docker.containers.create(tag, network_mode="none")
        (plugin / "main.py").write_text("print('v3')\n")
        lines.clear()
        third = images.build_plugin_image(tag, plugin, ["python", "/plugin/main.py"], progress=lines.append,
                                          client=plugbay_docker)
        assert third != changed and plugbay_docker.images.get(changed).id == changed
        assert any(line.startswith(f"{tag}: kept the image it replaced") for line in lines), lines
    finally:
        if user is not None:
            user.remove(force=True)
        for image in filter(None, (tag, changed)):
            try:
                plugbay_docker.images.remove(image, force=True)
            except ImageNotFound:  # never built; any other failure leaves an image behind
                pass


def _digest(root: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    images._tree_hash(h, root)
    return h.hexdigest()


def test_the_content_hash_covers_what_the_build_copies(tmp_path: Path) -> None:
    # the hash left out file modes and symlinked folders, which copytree copies into the build context:
    # a chmod +x (or an edit in a linked folder) kept a stale image "up to date"
    import shutil

    plugin, lib = tmp_path / "plugin", tmp_path / "lib"
    plugin.mkdir()
    lib.mkdir()
    (plugin / "my_plugin").write_text("#!/bin/sh\necho hi\n")
    (plugin / "my_plugin").chmod(0o644)
    (lib / "a.py").write_text("X = 1\n")
    (plugin / "lib").symlink_to(lib)
    (plugin / "__pycache__").mkdir()
    seen = {_digest(plugin)}
    (plugin / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"cache")  # not copied: the same hash
    assert _digest(plugin) in seen
    (plugin / "my_plugin").chmod(0o755)
    seen.add(_digest(plugin))
    (lib / "a.py").write_text("X = 2\n")
    seen.add(_digest(plugin))
    assert len(seen) == 3
    # what copytree makes of the folder (the build context) hashes as the folder does
    shutil.copytree(plugin, tmp_path / "ctx", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    assert _digest(tmp_path / "ctx") == _digest(plugin)
    (lib / "loop").symlink_to(plugin)  # copytree would copy it without end
    with pytest.raises(ConfigError, match="links back to .*, a folder it is in; remove the link"):
        _digest(plugin)


def test_bad_requests_are_config_errors(plugbay_docker: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown example image 'nope'"):
        images.ensure_example("nope", client=plugbay_docker)
    with pytest.raises(ConfigError, match="does not exist"):
        images.build_plugin_image("x:y", tmp_path / "absent", ["true"], client=plugbay_docker)
    with pytest.raises(ImageNotFoundError, match="base image 'plugbay-no-such-base:1' is not on the Docker engine"
                                                 " and plugbay never pulls; build or `docker load` it"):
        images.build_plugin_image("x:y", tmp_path, ["true"], base_image="plugbay-no-such-base:1",
                                  client=plugbay_docker)


@pytest.mark.parametrize("entry", ["python /plugin/plugin.py", [], ["python", ""], [b"python"], None, ["a\0b"]])
def test_an_entry_that_is_not_an_argv_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        entry: Any) -> None:
    # a str was split into characters (exec 'p' 'y' ...), [] built an image that ran nothing, and bytes or None
    # were a bare TypeError; refused before any engine is asked (none answers here)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(ConfigError, match=r"entry must be the argv the plugin runs, a non-empty list of non-empty"
                                          r' str, e.g. \["python", "/plugin/plugin.py"\]; got '):
        images.build_plugin_image("x:y", tmp_path, entry)


def test_cli_base_only() -> None:
    run = subprocess.run([sys.executable, "-m", "plugbay.images", "--base-only"], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    assert f"{images.BASE_IMAGE} present" in run.stderr
    bad = subprocess.run([sys.executable, "-m", "plugbay.images", "nope"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 1 and "unknown example image" in bad.stderr


@pytest.mark.parametrize("cut", ["progress raises", "failed command"])
def test_a_build_step_cut_short_ends_its_command_and_what_it_started(tmp_path: Path, cut: str) -> None:
    # a debootstrap left running after Ctrl-C wrote on under the rootfs folder ensure_base() removes
    pids = tmp_path / "pids"
    script = f"sleep 60 >/dev/null 2>&1 & echo $! > {pids}; echo $$ >> {pids}; echo started; " + (
        "exec sleep 60" if cut == "progress raises" else "exit 3")

    def progress(line: str) -> None:
        if cut == "progress raises":
            raise KeyboardInterrupt  # as Ctrl-C while the step's output is read

    if cut == "progress raises":
        with pytest.raises(KeyboardInterrupt):
            imagesteps.run_step(["sh", "-c", script], progress, what="step")
        for pid in map(int, pids.read_text().split()):
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], pid
    else:
        with pytest.raises(RunnerError, match="step failed .exit 3."):
            imagesteps.run_step(["sh", "-c", script], progress, what="step")
        background = int(pids.read_text().split()[0])
        os.kill(background, 9)  # a command that ends by itself: what it left is its own business


def test_a_build_lock_held_elsewhere_is_waited_for_a_bounded_time(tmp_path: Path) -> None:
    import fcntl

    tmp_path.joinpath(".lock").touch()
    with open(tmp_path / ".lock") as holder:  # another build's hold (one per open file, even in one process)
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(RunnerError, match="another image build has held .* let it finish"):
            with imagesteps.build_lock(tmp_path, wait=0.3):
                pass
        fcntl.flock(holder, fcntl.LOCK_UN)
    with imagesteps.build_lock(tmp_path, wait=0.3):  # free again: taken at once
        pass
