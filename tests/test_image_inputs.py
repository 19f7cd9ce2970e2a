"""plugbay.images: what a plugin image is built from (tag, entry, the plugin folder) and what a build leaves."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from docker.errors import ImageNotFound

from plugbay import images, imagesteps
from plugbay.errors import ConfigError, RunnerError

PREFIX = "plugbay-imginputs-test"


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    images._tree_hash(h, root)
    return h.hexdigest()


def _no_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")


@pytest.mark.parametrize("tag", ["My-Plugin:1", "my plugin:1", "x:y z", "x:", "-x", "x@sha256:" + "a" * 64,
                                 "a" * 64, "x:" + "t" * 129, "", None])
def test_a_tag_the_engine_refuses_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    tag: Any) -> None:
    # uppercase or a space reached the engine, whose 400 was an unexpected APIError; refused before any engine
    # is asked (none answers here)
    _no_engine(monkeypatch, tmp_path)
    with pytest.raises(ConfigError, match="is not a Docker image reference: give NAME"):
        images.build_plugin_image(tag, tmp_path, ["python", "/plugin/plugin.py"])


@pytest.mark.parametrize("tag", ["plugbay-kv:latest", "localhost:5000/team/kv:1.0", "Registry.Example:443/kv",
                                 "a__b.c-d/e", "kv:V_1.2-rc"])
def test_a_valid_tag_passes(tag: str) -> None:
    imagesteps.check_tag(tag)


@pytest.mark.parametrize(("entry", "message"), [
    (["/plugin/nope"], "the entry runs /plugin/nope, but .*/nope is not a file; put it in the plugin folder"),
    (["/plugin/sub"], "the entry runs /plugin/sub, but .*/sub is not a file"),
    (["/plugin/script"], r"the entry runs /plugin/script, but .*/script is not executable; `chmod \+x"),
    (["python", "/plugin/nope.py"], "the entry runs /plugin/nope.py, but .*/nope.py is not a file"),
    (["/usr/bin/python3.11", "/plugin/sub/../nope.py", "x"], "the entry runs /plugin/sub/../nope.py, but"),
])
def test_an_entry_naming_a_missing_plugin_file_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 entry: list[str], message: str) -> None:
    # the image built and then exited 127 (or 126) at every start
    (tmp_path / "sub").mkdir()
    (tmp_path / "script").write_text("#!/bin/sh\n")
    (tmp_path / "plugin.py").write_text("")
    _no_engine(monkeypatch, tmp_path)
    with pytest.raises(ConfigError, match=message):
        images.build_plugin_image(f"{PREFIX}:entry", tmp_path, entry)


@pytest.mark.parametrize("entry", [["python3", "-m", "plugbay.x"], ["sh", "-c", "/plugin/anything"],
                                   ["/usr/bin/env", "/plugin/nope"], ["python", "/plugin/plugin.py"],
                                   ["/plugin/script"], ["/plugin/link"]])
def test_an_entry_the_folder_provides_or_that_names_no_plugin_file_passes(tmp_path: Path, entry: list[str]) -> None:
    (tmp_path / "plugin.py").write_text("")
    (tmp_path / "script").write_text("#!/bin/sh\n")
    (tmp_path / "script").chmod(0o700)
    (tmp_path / "link").symlink_to(tmp_path / "script")  # the copy follows it
    imagesteps.check_entry_files(entry, tmp_path)


def test_what_a_plugin_image_cannot_hold_is_a_config_error_naming_it(tmp_path: Path) -> None:
    # a dangling link was skipped by the hash and then failed the copy with a bare shutil.Error; so did a pipe
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "plugin.py").write_text("")
    (plugin / "old.pyc").symlink_to(tmp_path / "gone")  # left out of the copy: no matter
    _digest(plugin)
    (plugin / "gone").symlink_to(tmp_path / "does-not-exist")
    with pytest.raises(ConfigError, match=f"{plugin}/gone is a link to {tmp_path}/does-not-exist, which does not"
                                          " exist .*: a plugin image holds files and folders only; remove it"):
        _digest(plugin)
    (plugin / "gone").unlink()
    (plugin / "loop").symlink_to(plugin / "loop")
    with pytest.raises(ConfigError, match="loop is a link to .*loop, which does not exist"):
        _digest(plugin)
    (plugin / "loop").unlink()
    os.mkfifo(plugin / "pipe")
    with pytest.raises(ConfigError, match=f"{plugin}/pipe is a named pipe: a plugin image holds files"):
        _digest(plugin)
    (plugin / "pipe").unlink()
    with tempfile.TemporaryDirectory(dir="/tmp") as short:  # a socket's path has a short length limit
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(f"{short}/s")
            (plugin / "sub").symlink_to(short)
            with pytest.raises(ConfigError, match=f"{plugin}/sub/s is a socket"):
                _digest(plugin)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="reads as another user")
def test_what_cannot_be_read_is_a_config_error_naming_it() -> None:
    # an unreadable file was a bare PermissionError from the hash
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-", dir="/tmp"))  # reachable by that user
    try:
        folder.chmod(0o755)
        (folder / "secret.py").write_text("")
        (folder / "secret.py").chmod(0o600)
        script = ("import hashlib, sys; from pathlib import Path; from plugbay import images; from plugbay.errors"
                  " import ConfigError\ntry:\n    images._tree_hash(hashlib.sha256(), Path(sys.argv[1]))\n"
                  "except ConfigError as exc:\n    print(exc)\n")
        env = {**os.environ, "PYTHONPATH": str(Path(images.__file__).parents[1])}
        run = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                              script, str(folder)], capture_output=True, text=True, env=env, timeout=60)
        assert run.stdout.strip() == (f"{folder}/secret.py cannot be read (Permission denied); make it readable"
                                      " (chmod u+r, and u+x for a folder) to build the image"), run
    finally:
        shutil.rmtree(folder)


@pytest.mark.docker
def test_the_plugins_own_entrypoint_and_private_files_run_in_the_image(plugbay_docker: Any, tmp_path: Path) -> None:
    # the generated launcher was written over /plugin/entrypoint (the image then exec'd itself for ever), and
    # files only their owner could read built fine but could not be read by the image's uid 10001
    plugin = tmp_path / "plugin"
    (plugin / "private").mkdir(parents=True)
    (plugin / "private" / "mod.py").write_text("print('private', __import__('os').getuid())\n")
    (plugin / "private" / "mod.py").chmod(0o600)
    (plugin / "private").chmod(0o700)
    (plugin / "entrypoint").write_text("#!/bin/sh\necho own \"$@\"\nexec python /plugin/private/mod.py\n")
    (plugin / "entrypoint").chmod(0o700)
    tag = f"{PREFIX}:own-entrypoint"
    container = None
    try:
        images.build_plugin_image(tag, plugin, ["/plugin/entrypoint", "arg"], progress=lambda line: None,
                                  client=plugbay_docker)
        container = plugbay_docker.containers.run(tag, detach=True, network_mode="none")
        code = container.wait(timeout=120)["StatusCode"]  # a hang guard only
        assert (code, container.logs().decode()) == (0, "own arg\nprivate 10001\n")
    finally:
        if container is not None:
            container.remove(force=True)
        try:
            plugbay_docker.images.remove(tag, force=True)
        except ImageNotFound:
            pass


@pytest.mark.docker
def test_a_failed_build_leaves_no_image_behind(plugbay_docker: Any, tmp_path: Path) -> None:
    # compileall failing left the image of the step before it (the plugin's COPY) as <none>:<none>, one per try
    (tmp_path / "plugin.py").write_text(f"# {uuid.uuid4()}\ndef broken(:\n")
    tag = f"{PREFIX}:fails"
    lines: list[str] = []
    with pytest.raises(RunnerError, match=f"building {tag} failed: "):
        images.build_plugin_image(tag, tmp_path, ["python", "/plugin/plugin.py"], progress=lines.append,
                                  client=plugbay_docker)
    steps = [line.split("--->")[1].strip() for line in lines if line.startswith(f"{tag}:  ---> ")
             and " " not in line.split("--->")[1].strip()]
    assert steps, lines
    with pytest.raises(ImageNotFound):
        plugbay_docker.images.get(steps[-1])
    with pytest.raises(ImageNotFound):
        plugbay_docker.images.get(tag)


def test_the_wheel_holds_what_src_holds_not_an_old_builds_leftovers(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # setuptools builds in the checkout's build/lib and never removes from it: a module deleted from src
    # since an earlier wheel went on into every image built after. Shown on a copy of the checkout's files
    # (a file planted in the checkout's own build/ and left there by an interrupted run would go into a
    # later `pip install .`).
    checkout = tmp_path / "checkout"
    shutil.copytree(images.REPO / "src" / "plugbay", checkout / "src" / "plugbay",
                    ignore=shutil.ignore_patterns(*imagesteps.IGNORED))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(images.REPO / name, checkout / name)
    stale = checkout / "build" / "lib" / "plugbay" / "_deleted_since_an_earlier_build.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("LEFT = True\n")
    monkeypatch.setattr(images, "REPO", checkout)
    dest = tmp_path / "wheels"
    dest.mkdir()
    images._plugbay_wheel(dest, lambda line: None)
    (wheel,) = dest.glob("plugbay-*.whl")
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    source = {f"plugbay/{path.relative_to(checkout / 'src' / 'plugbay').as_posix()}"
              for path in (checkout / "src" / "plugbay").rglob("*") if path.is_file()}
    packaged = {name for name in names if name.startswith("plugbay/")}
    assert packaged == source, (sorted(packaged - source)[:5], sorted(source - packaged)[:5])
