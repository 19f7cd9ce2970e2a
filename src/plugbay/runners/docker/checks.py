"""What the Docker runner checks before it trusts an image or an announced socket path."""

from __future__ import annotations

import os
import posixpath
from typing import Any

from plugbay.errors import ChecksumMismatchError, ConfigError, ImageNotFoundError, MalformedHandshakeError
from plugbay.runners.docker.budget import StartBudget
from plugbay.runners.docker.engine import CONTAINER_SOCKET_DIR, engine_call
from plugbay.runners.docker.sockethandles import SocketHandles, Unusable


def find_image(client: Any, name: str) -> Any:
    """The engine's image ``name``; plugbay never pulls, so a missing one says how to build it."""
    from docker.errors import APIError, ImageNotFound

    try:
        return engine_call(lambda: client.images.get(name), "look up the image")
    except ImageNotFound:
        raise missing_image(name) from None
    except APIError as exc:
        if exc.status_code != 400:  # 400 is the engine refusing the reference itself, before any lookup
            raise
        raise ConfigError(
            f"image reference {name!r} is malformed (the engine says: {exc.explanation or exc}). An image"
            " reference is [registry/]name[:tag] in lowercase, with no spaces: e.g. 'plugbay-kv:latest'"
        ) from None


def missing_image(name: str) -> ImageNotFoundError:
    """The error for image ``name`` not being on the engine (also plugbay.testing's): how to build it."""
    return ImageNotFoundError(
        f"image {name!r} is not on the Docker engine. Build it (the examples: `python -m plugbay.images`;"
        " your plugin: `plugbay images build --plugin-dir DIR --entry 'python /plugin/plugin.py' --tag NAME`"
        " or plugbay.images.build_plugin_image()) or `docker load` it; plugbay never pulls.")


def check_digest(image: Any, name: str, digest: str) -> None:
    """ChecksumMismatchError unless ``image`` is the pinned ``digest`` (its id or a repo digest)."""
    repo_digests = [d.split("@", 1)[1] for d in image.attrs.get("RepoDigests") or [] if "@" in d]
    if digest != image.id and digest not in repo_digests:
        raise ChecksumMismatchError(
            f"image {name!r} is {image.id} (repo digests {repo_digests or 'none'}), not the pinned"
            f" {digest}. The image was rebuilt or replaced; rebuild the trusted one or update the pin."
        )


def socket_on_host(address: str, host_socket_dir: str, container_id: str, handles: SocketHandles) -> str:
    """The path the host dials for a socket the container announced: a socket directly in the mapped
    folder, held open by ``handles`` (see sockethandles: the container may swap the file later).

    The path is normalised first; ``..``, sub-folders, a missing file and anything that is not a
    socket on the host side (a symlink the container made) are refused.
    """
    norm = posixpath.normpath(address) if address.startswith("/") else ""
    prefix = CONTAINER_SOCKET_DIR + "/"
    name = norm[len(prefix):] if norm.startswith(prefix) else ""
    why, cause = "it is not a file directly in", None
    if name and "/" not in name:
        try:
            return handles.dial_path(os.path.join(host_socket_dir, name))
        except Unusable as exc:
            why, cause = str(exc), exc  # the cause says which refusal it was (sockethandles.NotThereYet)
    raise MalformedHandshakeError(
        f"unix|{address}",
        f"the plugin in container {container_id[:12]} announced socket path {address!r}, but {why} the"
        f" mapped socket folder {CONTAINER_SOCKET_DIR}, so the host refuses to dial it. Let the plugin"
        f" create its socket in PLUGIN_UNIX_SOCKET_DIR ({CONTAINER_SOCKET_DIR}) itself") from cause


def check_secure_image(name: str, secure: Any, budget: StartBudget) -> str:
    """SecureConfig for images: its sha256 checksum is the image id (or a repo digest).

    Returns the checked image's id: the runner creates its container from that id, as the
    name may point at another image by the time it starts. The Client checks before start(), within
    its start_timeout: ``budget`` bounds the lookup as it bounds start()'s requests (see budget.py)."""
    if isinstance(secure, (list, tuple)) or secure.path is not None:
        raise ConfigError("a DockerRunner checks its image only: pass one SecureConfig without path=")
    if secure.hash != "sha256":
        raise ConfigError(f"image digests are sha256; SecureConfig uses {secure.hash!r}. Pass"
                          " SecureConfig(bytes.fromhex(<image id without 'sha256:'>)) (hash='sha256')")
    nothing = "it made no container"
    try:
        client = budget.open(nothing)
        image = budget.call(lambda: find_image(client, name), "look up the image", nothing)
    finally:
        budget.close()
    check_digest(image, name, "sha256:" + secure.checksum.hex())
    return str(image.id)
