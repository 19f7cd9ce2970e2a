"""Builds plugbay's images locally: the Debian base image and plugin images.

``python -m plugbay.images [--base-only] [NAME ...]`` builds the base image
``plugbay-base:bookworm`` when it is missing (debootstrap a minimal bookworm
with python3 and python3-venv, then ``docker import`` it: no registry is ever
pulled from), then the example plugin images (``kv``: the Python KV plugin,
``kv-go``: go-plugin's KV plugin in Go, ``counter`` when the example exists).

Plugin images are built from ``Dockerfile.plugin``: plugbay and its
dependencies are installed offline from wheels into a venv, the plugin's code
is copied in, and the image runs as a non-root user. Each image carries a
``plugbay.content-hash`` label over everything that went into it, so asking
again for an unchanged image costs one ``docker inspect``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugbay.core.transport.tempdirs import make_tempdir
from plugbay.errors import ConfigError, ImageNotFoundError, RunnerError
from plugbay.imagedrops import drop_failed_step, drop_replaced
from plugbay.imagesteps import (IGNORED, Progress, binary_folder, build_lock, check_entry_files, check_tag,
                                make_readable, run_step)
from plugbay.imagesteps import tree_hash as _tree_hash
from plugbay.runners.docker.engine import engine, engine_call, engine_unreachable, require_sdk
from plugbay.runners.docker.sweep import BUILT

BASE_IMAGE = "plugbay-base:bookworm"
HASH_LABEL = BUILT  # what the sweep of unused images looks for
SUITE = "bookworm"
# Runtime dependencies installed into every plugin image, pinned to what this
# host runs so host and plugin speak through the same grpcio/protobuf.
RUNTIME_DEPS = ("grpcio", "protobuf", "cryptography")
REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile.plugin"
CACHE = REPO / ".cache" / "images"
# the classic builder's line for a step that succeeded: " ---> " and the short id of its image
_STEP_IMAGE = re.compile(r"^ ---> ([0-9a-f]{12,64})\s*$", re.MULTILINE)

def _print_progress(line: str) -> None:
    print(f"images: {line}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class PluginImage:
    """A plugin image recipe: the code folder and the command the image runs."""

    tag: str
    source: Callable[[], Path]  # resolved lazily: the Go recipe compiles a binary
    entry: Sequence[str]  # argv inside the image; the plugin folder is /plugin
    target: str | None = None  # Dockerfile.plugin target: None (the plugin) or "gateway"


def _kv_go_source() -> Path:
    sys.path.insert(0, str(REPO))
    try:
        from tests.gobuild import build_go  # the Go test programs live with the tests
    finally:
        sys.path.remove(str(REPO))
    return binary_folder(CACHE, build_go("kv_plugin"), "kv_plugin")


EXAMPLES: dict[str, PluginImage] = {
    "kv": PluginImage("plugbay-kv:latest", lambda: REPO / "examples" / "kv", ["python", "/plugin/plugin.py"]),
    "kv-go": PluginImage("plugbay-kv-go:latest", _kv_go_source, ["/plugin/kv_plugin"]),
    "counter": PluginImage("plugbay-counter:latest", lambda: REPO / "examples" / "counter",
                           ["python", "/plugin/plugin.py"]),
    # go-plugin's KV plugin behind the network gateway (built on request only)
    "kv-go-gateway": PluginImage("plugbay-kv-go-gateway:latest", _kv_go_source, ["/plugin/kv_plugin"],
                                 target="gateway"),
    "streaming": PluginImage("plugbay-streaming:latest", lambda: REPO / "examples" / "streaming",
                             ["python", "/plugin/plugin.py"]),
}


def docker_client() -> Any:
    """A docker SDK client with a negotiated API version that answered a ping, or EngineUnavailableError.

    The version is asked once per engine and process: an engine gone since (or hung) fails the ping,
    whose connection errors and timeouts are the SDK's requests' own, not DockerExceptions."""
    client = engine()  # EngineUnavailableError when the SDK is missing too
    from docker.errors import DockerException

    try:
        engine_call(client.ping, "answer a ping", getattr(client.api, "timeout", None))
    except DockerException as exc:  # an answer that is not a pong (an error status)
        client.close()
        raise engine_unreachable(exc) from exc
    except BaseException:
        client.close()  # never left for the garbage collector with its connection pool
        raise
    return client


# --- base image -------------------------------------------------------------


def apt_mirror(deb822: Path = Path("/etc/apt/sources.list.d/debian.sources"),
               legacy: Path = Path("/etc/apt/sources.list")) -> str:
    """The Debian mirror this machine's apt uses (deb822 sources first, then sources.list)."""
    if deb822.exists():
        for stanza in deb822.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith(("#", " ")):
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
            if SUITE in fields.get("suites", "").split() and fields.get("uris"):
                return fields["uris"].split()[0]
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                return parts[1]
    return "http://deb.debian.org/debian"


@contextmanager
def _own_client() -> Iterator[Any]:
    client = docker_client()
    try:
        yield client
    finally:
        client.close()


def ensure_base(progress: Progress = _print_progress, *, client: Any = None) -> str:
    """Build ``plugbay-base:bookworm`` unless it exists; return its image id."""
    require_sdk()
    from docker.errors import ImageNotFound

    if client is None:  # our own client: closed again, not left to the garbage collector
        with _own_client() as own:
            return ensure_base(progress, client=own)
    try:
        return str(client.images.get(BASE_IMAGE).id)
    except ImageNotFound:
        pass
    with build_lock(CACHE):
        try:  # another process may have built it while we waited
            return str(client.images.get(BASE_IMAGE).id)
        except ImageNotFound:
            pass
        if shutil.which("debootstrap") is None:
            raise RunnerError(f"{BASE_IMAGE} is missing and debootstrap is not installed:"
                              " run `apt-get install debootstrap` (scripts/setup does), then retry")
        mirror = apt_mirror()
        progress(f"building {BASE_IMAGE} with debootstrap from {mirror} (a few minutes, once)")
        folder = Path(make_tempdir("plugbay-rootfs-", dir="/var/tmp"))  # marked for sweeps; the root inside
        root = folder / "rootfs"
        try:
            run_step(["debootstrap", "--variant=minbase", "--include=python3,python3-venv",
                     SUITE, str(root), mirror], progress, what="debootstrap")
            progress(f"importing the root filesystem as {BASE_IMAGE}")
            tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
            try:
                run_step(["docker", "import", "-", BASE_IMAGE], progress, what="docker import", stdin=tar.stdout)
            finally:
                if tar.stdout:
                    tar.stdout.close()
                tar.wait()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        image_id = str(client.images.get(BASE_IMAGE).id)
        progress(f"{BASE_IMAGE} ready ({image_id[:19]})")
        return image_id


# --- plugin images ----------------------------------------------------------


def _dep_pins() -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in RUNTIME_DEPS]


def _wheelhouse(progress: Progress) -> Path:
    """Wheels of plugbay's runtime dependencies, downloaded once per set of pins."""
    pins = _dep_pins()
    folder = CACHE / ("deps-" + hashlib.sha256(" ".join(pins).encode()).hexdigest()[:16])
    if (folder / ".complete").exists():
        return folder
    progress(f"downloading wheels for {' '.join(pins)}")
    folder.mkdir(parents=True, exist_ok=True)
    run_step([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
             "--dest", str(folder), *pins], progress, what="pip download")
    (folder / ".complete").touch()
    return folder


def _plugbay_wheel(dest: Path, progress: Progress) -> None:
    if not (REPO / "pyproject.toml").exists():
        raise ConfigError(f"plugbay's source tree is not at {REPO}; plugin images are built from a checkout")
    with tempfile.TemporaryDirectory(prefix="plugbay-wheel-") as build:
        # Built from a copy (src/plugbay and pyproject.toml, which the image's hash covers, and README.md,
        # which only goes into the wheel's METADATA and is not hashed): setuptools builds in the tree's
        # build/lib and never removes from it, so a wheel of the checkout itself carried modules deleted
        # from src since.
        tree = Path(build) / "tree"
        shutil.copytree(REPO / "src" / "plugbay", tree / "src" / "plugbay", ignore=shutil.ignore_patterns(*IGNORED))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(REPO / name, tree / name)
        run_step([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                 "-w", build, str(tree)], progress, what="pip wheel plugbay")
        for wheel in Path(build).glob("plugbay-*.whl"):
            shutil.copy2(wheel, dest / wheel.name)


def _entrypoint(entry: Sequence[str]) -> str:
    if not isinstance(entry, (list, tuple)) or not entry or not all(
            isinstance(arg, str) and arg and "\0" not in arg for arg in entry):
        raise ConfigError(f"a plugin image's entry must be the argv the plugin runs, a non-empty list of non-empty"
                          f" str, e.g. [\"python\", \"/plugin/plugin.py\"]; got {entry!r:.80}")
    quoted = " ".join("'" + arg.replace("'", "'\\''") + "'" for arg in entry)
    return f'#!/bin/sh\n# generated by plugbay.images\nexec {quoted} "$@"\n'


def build_plugin_image(tag: str, plugin_dir: Path, entry: Sequence[str], *,
                       base_image: str = BASE_IMAGE, progress: Progress = _print_progress,
                       client: Any = None, target: str | None = None) -> str:
    """Build (or find up to date) a plugin image; return its image id.

    ``plugin_dir`` is copied to /plugin in the image; ``entry`` is the argv the
    plugin runs (e.g. ``["python", "/plugin/plugin.py"]``). ``target="gateway"``
    makes the image run that plugin behind plugbay's network gateway (see
    Dockerfile.plugin and docs/network.md).
    """
    require_sdk()
    from docker.errors import APIError, BuildError, ImageNotFound

    _entrypoint(entry)  # checked before the engine is asked anything
    check_tag(tag)
    plugin_dir = Path(plugin_dir)
    if not plugin_dir.is_dir():
        raise ConfigError(f"plugin folder {plugin_dir} does not exist; pass the folder holding the plugin's code")
    check_entry_files(entry, plugin_dir)
    if client is None:
        with _own_client() as own:
            return build_plugin_image(tag, plugin_dir, entry, base_image=base_image, progress=progress,
                                      client=own, target=target)
    if not DOCKERFILE.exists():
        raise ConfigError(f"{DOCKERFILE} is missing; build plugin images from a plugbay checkout")
    if base_image == BASE_IMAGE:
        base_id = ensure_base(progress, client=client)
    else:
        try:
            base_id = str(client.images.get(base_image).id)
        except ImageNotFound:
            raise ImageNotFoundError(
                f"base image {base_image!r} is not on the Docker engine and plugbay never pulls; build or"
                f" `docker load` it first, or leave base_image at {BASE_IMAGE!r} (built with debootstrap)"
            ) from None
    with build_lock(CACHE):
        wheels = _wheelhouse(progress)
        h = hashlib.sha256()
        for part in (DOCKERFILE.read_bytes(), base_id.encode(), " ".join(_dep_pins()).encode(),
                     _entrypoint(entry).encode(), (target or "").encode()):
            h.update(hashlib.sha256(part).digest())
        _tree_hash(h, REPO / "src" / "plugbay")
        h.update((REPO / "pyproject.toml").read_bytes())
        _tree_hash(h, plugin_dir)
        digest = h.hexdigest()[:32]
        previous = None
        try:
            previous = client.images.get(tag)
            if previous.labels.get(HASH_LABEL) == digest:
                progress(f"{tag} is up to date (image {str(previous.id)[7:19]}, content {digest[:12]})")
                return str(previous.id)
        except ImageNotFound:
            pass
        progress(f"building {tag} from {plugin_dir} on {base_image}")
        with tempfile.TemporaryDirectory(prefix="plugbay-build-") as tmp:
            ctx = Path(tmp)
            (ctx / "wheels").mkdir()
            for wheel in wheels.glob("*.whl"):
                try:  # hard links keep big wheels from being copied on every build
                    os.link(wheel, ctx / "wheels" / wheel.name)
                except OSError:
                    shutil.copy2(wheel, ctx / "wheels" / wheel.name)
            _plugbay_wheel(ctx / "wheels", progress)
            try:  # the folder changed since it was hashed (a link broke, a pipe appeared)
                shutil.copytree(plugin_dir, ctx / "plugin", ignore=shutil.ignore_patterns(*IGNORED))
            except (shutil.Error, OSError) as exc:
                raise ConfigError(f"copying the plugin folder {plugin_dir} failed: {exc}"[:2000]) from None
            make_readable(ctx / "plugin")
            # outside /plugin: the plugin's own file (or folder) named entrypoint stays as it is
            (ctx / "entrypoint").write_text(_entrypoint(entry))
            (ctx / "entrypoint").chmod(0o755)
            shutil.copy2(DOCKERFILE, ctx / "Dockerfile.plugin")
            # The plugin is the stage "plugin", named: with no target, the engine's classic builder builds
            # every stage, and the gateway stage's image would stay behind untagged after each build.
            steps: list[str] = []  # the image of each step that succeeded, as the builder reports it
            try:
                for chunk in client.api.build(path=str(ctx), dockerfile="Dockerfile.plugin", tag=tag,
                                              buildargs={"BASE_IMAGE": base_image}, labels={HASH_LABEL: digest},
                                              rm=True, forcerm=True, pull=False, network_mode="none", decode=True,
                                              target=target or "plugin"):
                    if "stream" in chunk and chunk["stream"].strip():
                        steps += _STEP_IMAGE.findall(chunk["stream"])
                        progress(f"{tag}: {chunk['stream'].rstrip()}")
                    if "error" in chunk:
                        raise BuildError(chunk["error"], [])
            except BaseException as exc:
                if steps:
                    drop_failed_step(client, tag, steps[-1], progress)
                if isinstance(exc, (APIError, BuildError)):
                    raise RunnerError(f"building {tag} failed: {exc}. Check {DOCKERFILE} and {plugin_dir}") from exc
                raise
        image = client.images.get(tag)
        progress(f"{tag} ready ({image.short_id})")
        if previous is not None and previous.id != image.id:
            drop_replaced(client, tag, previous.id, progress)
        return str(image.id)


def ensure_example(name: str, progress: Progress = _print_progress, *, client: Any = None) -> str:
    """Build example image ``name`` (kv, kv-go, kv-go-gateway, counter, streaming) when needed; return its tag."""
    recipe = EXAMPLES.get(name)
    if recipe is None:
        raise ConfigError(f"unknown example image {name!r}; choose one of {sorted(EXAMPLES)}")
    require_sdk()  # before the recipe's source: kv-go's compiles a Go binary first
    build_plugin_image(recipe.tag, recipe.source(), recipe.entry, progress=progress, client=client,
                       target=recipe.target)
    return recipe.tag


def _available_examples() -> list[str]:
    names = []
    if (REPO / "examples" / "kv" / "plugin.py").exists():
        names.append("kv")
    if (REPO / "tests" / "go" / "kv_plugin").is_dir() and shutil.which("go"):
        names.append("kv-go")
    if (REPO / "examples" / "counter" / "plugin.py").exists():
        names.append("counter")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plugbay.images", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-only", action="store_true", help=f"only build {BASE_IMAGE} when missing")
    parser.add_argument("names", nargs="*",
                        help=f"example images to build, any of {sorted(EXAMPLES)} (default: kv and counter, and"
                             " kv-go when Go is installed)")
    args = parser.parse_args(argv)
    try:
        with _own_client() as client:
            ensure_base(client=client)
            _print_progress(f"{BASE_IMAGE} present")
            if not args.base_only:
                for name in args.names or _available_examples():
                    ensure_example(name, client=client)
    except (RunnerError, ConfigError) as exc:
        print(f"images: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
