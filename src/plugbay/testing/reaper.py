"""testcontainers' Ryuk reaper failing to start before a PluginContainer: said as what it is."""

from __future__ import annotations

from testcontainers.core.docker_client import DockerClient

from plugbay.errors import ConfigError, ImageNotFoundError
from plugbay.runners.docker.checks import find_image


def reaper_failure(engine: DockerClient, image: str, exc: BaseException) -> ImageNotFoundError | None:
    """The error to raise when ``exc`` (out of testcontainers' start) is its Ryuk reaper's image failing to pull.

    testcontainers starts Ryuk before the first container of a run and pulls its image when the engine
    lacks it; offline (no registry) the user got docker's bare APIError, a 500 naming registry-1.docker.io.
    The reaper and its pull are the user's choice (its env, testcontainers' global config): a registry that
    can be reached still serves it, so only a pull that failed is said, with both ways out."""
    from docker.errors import APIError
    from testcontainers.core.config import testcontainers_config as config
    from testcontainers.core.container import Reaper

    if not isinstance(exc, APIError) or config.ryuk_disabled or Reaper._instance is not None:
        return None
    if image == config.ryuk_image:
        return None
    try:
        find_image(engine.client, config.ryuk_image)
        return None  # the reaper's image is there: the failure is another one
    except (ImageNotFoundError, ConfigError):
        pass
    return ImageNotFoundError(
        f"testcontainers starts its Ryuk reaper (image {config.ryuk_image!r}) before the plugin's container, and"
        f" could not pull that image ({exc}). Set TESTCONTAINERS_RYUK_DISABLED=true (PluginContainer removes its"
        " own container at stop(), and plugbay.runners.docker.sweep() removes any a killed run left), or"
        " `docker load` the image (or name a local copy in RYUK_CONTAINER_IMAGE)")
